"""Flashpods token exchange service: secrets reach job containers only through here."""
