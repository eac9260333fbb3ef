"""lvsconf conformance cases: one module per rule family, each case named by a stable rule id."""
