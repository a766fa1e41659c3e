"""The two cache tiers: the shared folder on disk and the bounded memory cache in front of it."""
