"""Prompt templates, shipped as package data (``symoe_agents.prompts``).

Each ``*.md`` file is a ``str.format`` template rendered strictly by
``symoe_agents.prompting``: a missing or unexpected variable is an error, and literal braces
are doubled (``\\boxed{{X}}``). Edit them here, or point ``prompts_dir`` in the config at a
folder holding files of the same names.
"""
