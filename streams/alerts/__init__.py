"""Alerts: the evaluator service on `conversions.micro` (`service`) and the webhook (`webhook`)."""
