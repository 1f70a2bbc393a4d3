"""STIX 2.1 in and out (issue 13): pure conversion between fcnode records and
STIX 2.1 bundles. No I/O here: node/services/service.py reads, audits and publishes;
the CLI reads and writes files."""
