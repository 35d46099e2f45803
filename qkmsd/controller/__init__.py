"""The controller role: electing it among the eligible nodes (routes and budgets next)."""

from ._agent import ControllerAgent, ControllerStatus

__all__ = ["ControllerAgent", "ControllerStatus"]
