"""Where plugin packages shipped before the notebook API moved to ``schedulemaster.notebook``
import their loader from (their ``__init__.py`` says ``from schedulemaster.shipping import
load_function``); packages shipped now import it from ``schedulemaster.notebook.shipping``."""

from schedulemaster.notebook.shipping import load_function  # noqa: F401
