"""Unit tests of the conformance runner (rules, case, grading, plugin, reports, lvsconf run)."""
