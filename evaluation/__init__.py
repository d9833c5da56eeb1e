"""Judging models: the rolling backtest, the quality gate on one window, the fallback
choice. Above ``towers`` (it scores its models and baselines), below ``orchestration``;
``serving`` never imports it."""
