"""gRPC: TorchServe's inference and management APIs and OIP v2 on grpcio, beside trio.

grpcio's asyncio servers run the calls as asyncio tasks in one loop, on one
thread of their own; each call's work is bridged into the trio loop
(``supervisor.grpc.bridge``) without a blocked thread and served there by the
same pieces as HTTP: ``Predictor.infer`` for predictions, the management
functions of ``supervisor.api.management``, the OIP renderers of
``supervisor.api.oip``. ``supervisor.grpc.listener.run`` is the long-lived
component the server starts beside its HTTP listeners.
"""

__all__: list[str] = []
