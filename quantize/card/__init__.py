"""The card stage: one README.md per output repo (`render`), and the cross-variant comparison (`compare`)."""

from ..formats.sections import PLOT_NAME, CardInputs, Row
from .render import card_dir, render, write_cards

__all__ = ["PLOT_NAME", "CardInputs", "Row", "card_dir", "render", "write_cards"]
