"""Writing and reading "key: value" infotext lines (values with ',', ':' or a newline are JSON-quoted)."""

import json
import re

from modules import script_callbacks

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    text = str(text)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_generation_parameters(infotext):
    lines = infotext.strip().split("\n")
    params_line = lines[-1]
    prompt_lines = []
    negative = ""
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            negative = line[len("Negative prompt:"):].strip()
        else:
            prompt_lines.append(line)
    res = {"Prompt": "\n".join(prompt_lines), "Negative prompt": negative}
    for key, value in _PARAM.findall(params_line):
        res[key.strip()] = unquote(value.strip())
    script_callbacks.infotext_pasted_callback(infotext, res)
    return res
