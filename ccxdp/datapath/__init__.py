"""The kernel side: libbpf access, the layout shared with C, the loader, the settings map, the name
table, the bulk C helper, the name hash, kernel headers for bcc.
"""
