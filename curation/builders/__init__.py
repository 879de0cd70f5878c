"""Builders: sets made by matching or mixing (hardmatch, ImageNet-Captions, source mixing)."""
