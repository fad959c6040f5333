"""Reading server-sent events the way LoRAX clients do."""

import json


def parse_events(lines) -> list[dict]:
    return [
        json.loads(line[5:]) for line in lines if line.startswith("data:") and line[5:].strip() != "[DONE]"
    ]
