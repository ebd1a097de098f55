"""The provider's view across tenants: queue, jobs, datasets, tenants and the audit log."""
