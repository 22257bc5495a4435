"""Reporting: HTML reports, tables and figures."""
