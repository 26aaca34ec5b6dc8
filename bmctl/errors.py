"""Errors bmctl reports to the user as one paragraph and an exit status (no traceback)."""


class BmctlError(Exception):
    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def render(self) -> str:
        return f"error: {self.message}" + (f" Fix: {self.fix}" if self.fix else "")
