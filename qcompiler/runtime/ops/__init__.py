"""Op implementations; importing this package registers every op in the table."""

import importlib
import pkgutil

# Each module registers its ops on import; new modules are picked up without editing this file.
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
