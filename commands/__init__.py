"""ksminspect's command-line interface (installed as ksminspect.commands)."""
