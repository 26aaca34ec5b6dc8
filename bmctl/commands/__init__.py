"""What each CLI command does, separated from option parsing."""
