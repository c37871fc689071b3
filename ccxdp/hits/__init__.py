"""What was blocked: the kernel's counters, their collection into the hits store, the store."""
