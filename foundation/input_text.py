"""What text from outside may contain. NUL bytes cannot be stored by PostgreSQL (text or jsonb) and control
characters have no business in names, paths or settings; both are refused at the boundary with the field named,
before anything is looked up or written."""

# Tab, line feed and carriage return are ordinary in free text (a justification, a comment, a dataset line).
_FREE_TEXT_ALLOWED = {"\t", "\n", "\r"}


def is_control_character(character: str, *, free_text: bool = False) -> bool:
    """C0 controls (NUL included), DEL and C1 controls; tab and newlines are allowed in free text only."""
    code = ord(character)
    if free_text and character in _FREE_TEXT_ALLOWED:
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F


def control_character_in(text: str, *, free_text: bool = False) -> str | None:
    """The first control character in `text`, or None."""
    return next((c for c in text if is_control_character(c, free_text=free_text)), None)


def describe(character: str) -> str:
    return f"U+{ord(character):04X}"


def first_control_character(value, *, field: str = "", free_text: bool = True) -> tuple[str, str] | None:
    """(field path, character) of the first control character anywhere in a JSON-like value, keys included.

    Walks iteratively, so a deeply nested document cannot exhaust the stack."""
    stack = [(field, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            found = control_character_in(item, free_text=free_text)
            if found:
                return path or "body", found
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                key_text = str(key)
                found = control_character_in(key_text)
                child_path = f"{path}.{key_text}" if path else key_text
                if found:
                    return child_path, found
                stack.append((child_path, child))
        elif isinstance(item, list | tuple):
            for index in range(len(item) - 1, -1, -1):
                stack.append((f"{path}[{index}]", item[index]))
    return None


def nesting_depth(value, *, limit: int) -> int:
    """How deeply lists and objects nest (a scalar is 0), counting at most to limit + 1."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest
