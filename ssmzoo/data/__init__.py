"""LightningDataModules: one subpackage per data family (lra/, timeseries/, lm/, synthetic/)."""
