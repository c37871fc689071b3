"""Who is told: hits attributed to subscriber lines, notification records, mail."""
