"""Time series: classical forecasters (statsmodels, statsforecast) and the backtest harness that
compares every model on the same rolling-origin windows (MASE, weighted quantile loss)."""
