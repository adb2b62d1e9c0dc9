"""Distilling a student potential from a teacher: the configurations the teacher labels."""
