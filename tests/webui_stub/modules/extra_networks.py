"""Extra-network tags: the registry, its aliases, and the order in which handlers are called
(as modules/extra_networks.py): for each tag kind in order of first appearance, its handler (a registered name
wins over an alias) gets that kind's tags; handlers named by several kinds get them concatenated; then every
registered handler that was not called gets an empty list."""

import re
from collections import defaultdict

extra_network_registry: dict = {}
extra_network_aliases: dict = {}
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def initialize():
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network, alias):
    extra_network_aliases[alias] = extra_network


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def lookup_extra_networks(extra_network_data):
    res: dict = {}
    for kind, args in list(extra_network_data.items()):
        handler = extra_network_registry.get(kind) or extra_network_aliases.get(kind)
        if handler is None:
            continue
        res.setdefault(handler, []).extend(args)
    return res


def activate(p, extra_network_data):
    activated = []
    for handler, args in lookup_extra_networks(extra_network_data).items():
        handler.activate(p, args)
        activated.append(handler)
    for handler in list(extra_network_registry.values()):
        if handler not in activated:
            handler.activate(p, [])
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    data = lookup_extra_networks(extra_network_data)
    for handler in data:
        handler.deactivate(p)
    for handler in list(extra_network_registry.values()):
        if handler not in data:
            handler.deactivate(p)


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    out, extra = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        if extra is None:
            extra = data
        out.append(text)
    return out, extra
