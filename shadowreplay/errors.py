"""The error a verb raises for the user: printed as one clear line, no traceback."""


class UserError(Exception):
    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
