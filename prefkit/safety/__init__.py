"""Egida-style safety data: schema and loader, attack styles, held-out split, judges, refusal detection."""
