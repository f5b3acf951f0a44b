"""pytest-trio 0.8 with trio >= 0.25 wraps every test failure in one extra
ExceptionGroup ("Exceptions from Trio nursery"). That breaks pytest's failure
reports, ``xfail(raises=...)`` and skip reasons. This plugin removes exactly
that one layer and nothing else; real groups from the code under test stay.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

_TRIO_NURSERY_MSG = "Exceptions from Trio nursery"


def _single_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    __tracebackhide__ = True
    if pyfuncitem.get_closest_marker("trio") is None:
        return (yield)
    try:
        return (yield)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and group.message == _TRIO_NURSERY_MSG:
            raise group.exceptions[0] from None
        raise
    except (pytest.skip.Exception, pytest.xfail.Exception) as exc:
        context = exc.__context__
        if isinstance(context, BaseExceptionGroup):
            leaf = _single_leaf(context)
            if isinstance(leaf, type(exc)):
                raise leaf from None
        raise
