"""The card stage: one README.md per output repo (`render`), and the cross-variant comparison (`compare`)."""

from ..formats.sections import CardInputs, Row
from ..outputs import PLOT_NAME
from .render import CARD_RECORD, card_dir, render, write_cards, written_for

__all__ = ["CARD_RECORD", "PLOT_NAME", "CardInputs", "Row", "card_dir", "render", "write_cards", "written_for"]
