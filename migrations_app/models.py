"""Legacy credential mappings, rotation and the cutover dashboard live here."""
