"""Running one function of the authors' released code from its file, where importing the file is not possible
(it downloads models or imports packages at module level)."""

import ast


def function_from_file(path, name, namespace):
    """The top-level function ``name`` of the Python file ``path``, compiled from that file alone, its globals
    ``namespace`` (the modules it uses)."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), filename=path)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = dict(namespace)
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)  # noqa: S102
    return namespace[name]
