"""Method cards: a capacity battery for one method beside the built-ins, and its renderings."""

from .battery import run_battery
from .render import write_card

__all__ = ["run_battery", "write_card"]
