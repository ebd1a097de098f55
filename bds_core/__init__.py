"""bds_core: the Bayesian Data Scheduler library (data, models, schedulers, trainer, evaluation)."""
