"""Procedural driving data: a quick street scan now; the full synthetic world writes dataset formats."""
