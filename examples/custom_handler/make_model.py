"""Build the model: fit its weights to a few known temperatures, save the state dict."""

from __future__ import annotations

import torch
from model import Thermometer

CELSIUS = [-40.0, 0.0, 37.0, 100.0]
FAHRENHEIT = [-40.0, 32.0, 98.6, 212.0]


def main() -> None:
    inputs = torch.tensor([[c, 1.0] for c in CELSIUS], dtype=torch.float64)
    targets = torch.tensor([[f] for f in FAHRENHEIT], dtype=torch.float64)
    slope, intercept = torch.linalg.lstsq(inputs, targets).solution.flatten().tolist()
    model = Thermometer()
    with torch.no_grad():
        model.linear.weight.fill_(slope)
        model.linear.bias.fill_(intercept)
    torch.save(model.state_dict(), "thermometer.pt")
    print(f"wrote thermometer.pt: F = {slope:.2f} * C + {intercept:.2f}")


if __name__ == "__main__":
    main()
