"""The notebooks' tools: views of tokens and batches, a chat box, a file server, a toy checkpoint, the roofline.

Nothing else in ftlib imports them; notebooks import each from its module.
"""
