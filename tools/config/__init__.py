"""The study configuration: its typed schema (:mod:`.schema`), the checks every source of settings goes through
(:mod:`.check`) and the named profiles (``profiles.yaml``). Imports nothing from p53hcc but ``errors``."""
