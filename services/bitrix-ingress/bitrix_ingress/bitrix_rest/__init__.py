"""The portal REST client both processes use: typed errors, a portal's token and pacing, the egress guard."""
