"""lvsconf harness: topology, implementations under test, traffic, kernel lanes, reports, plugin."""
