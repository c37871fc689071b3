"""What is listed: names, the catalog, block and allow lists, exempt prefixes, feeds and their
formats.
"""
