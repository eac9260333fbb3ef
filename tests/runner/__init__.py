"""Unit tests of the conformance runner (rules, casework, plugin, reports, lvsconf run)."""
