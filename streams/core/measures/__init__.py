"""Measures over the engine's outputs: counters as plain data (`counters`), the analyses the
API and the dashboard serve (`insights`), alert rules and their verdicts (`alerts`), live
experiments (`experiments`) and the statistics they share (`stats`)."""
