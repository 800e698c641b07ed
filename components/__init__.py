"""IDR on OpenStack: Pulumi components and the pure renderers behind them."""
