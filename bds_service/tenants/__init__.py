"""Tenants (customer organisations) and their API keys."""
