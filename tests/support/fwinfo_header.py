"""Declarations-only ``Foundation.h`` and ``Virtualization.h`` made from pyobjc's SDK scans.

Test-only. There is no macOS SDK on Linux, but pyobjc's source distributions carry
``*.fwinfo`` files: a machine-readable scan of Apple's framework headers (classes, selectors,
argument types, the macOS version each appeared in). This module fetches them once (cached
under ``~/.cache/agent-swarm/fwinfo``) and writes headers from them, so that zig's clang can
compile ``native/vz/src/darwin/vz_backend.mm`` for macOS and catch misspelled selectors,
unknown properties and APIs newer than the deployment target that are used without
``@available`` (tests/vz/test_macos_compile.py).

The output is data derived from Apple's headers: it goes to a temporary directory and is never
committed. It declares only what a compile needs: every Virtualization class, protocol, enum and
extern; of Foundation, the classes in ``FOUNDATION_CLASSES`` (plus their superclasses) in full,
every other Foundation class as ``@class``, and the Foundation types those declarations use.
``NSObject`` itself, ``dispatch`` and blocks come from the Darwin headers that zig ships.

Usage (by hand): ``python tests/support/fwinfo_header.py OUT_DIR [--arch arm64|x86_64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHS = ("arm64", "x86_64")


@dataclass(frozen=True)
class FwinfoSource:
    """Where a framework's scan lives: a pyobjc sdist and the files inside it."""

    framework: str
    package: str
    version: str
    subdir: str  # inside the unpacked sdist
    file_pattern: str  # "{arch}" is replaced

    def file_name(self, arch: str) -> str:
        return self.file_pattern.format(arch=arch)


VIRTUALIZATION = FwinfoSource(
    "Virtualization",
    "pyobjc-framework-Virtualization",
    "12.2.2",
    "metadata/raw",
    "{arch}-26.5.fwinfo",
)
FOUNDATION = FwinfoSource(
    "Foundation", "pyobjc-framework-Cocoa", "13.0", "metadata/raw.Foundation", "{arch}-27.fwinfo"
)

# Foundation classes declared in full (with their superclasses): those vz_backend.mm uses. The
# rest are only @class, so a message to one of them fails to compile until it is listed here.
FOUNDATION_CLASSES = ("NSString", "NSURL", "NSData", "NSError", "NSArray", "NSMutableArray")

# Lightweight generics: the scan uses the parameter names in types ("NSArray<ObjectType> *")
# but does not record the parameter lists, so they are listed here (as in Apple's headers).
# True = __covariant (the immutable classes).
GENERIC_PARAMS: dict[str, tuple[tuple[str, ...], bool]] = {
    "NSArray": (("ObjectType",), True),
    "NSMutableArray": (("ObjectType",), False),
    "NSSet": (("ObjectType",), True),
    "NSMutableSet": (("ObjectType",), False),
    "NSCountedSet": (("ObjectType",), False),
    "NSOrderedSet": (("ObjectType",), True),
    "NSMutableOrderedSet": (("ObjectType",), False),
    "NSEnumerator": (("ObjectType",), True),
    "NSDirectoryEnumerator": (("ObjectType",), False),
    "NSDictionary": (("KeyType", "ObjectType"), True),
    "NSMutableDictionary": (("KeyType", "ObjectType"), False),
    "NSCache": (("KeyType", "ObjectType"), False),
    "NSMapTable": (("KeyType", "ObjectType"), False),
    "NSHashTable": (("ObjectType",), False),
    "NSOrderedCollectionDifference": (("ObjectType",), True),
    "NSOrderedCollectionChange": (("ObjectType",), True),
    "NSMeasurement": (("UnitType",), False),
}

# Identifiers that are not types of the scanned frameworks: C and Objective-C keywords,
# qualifiers, and types that the Darwin headers (objc, stdint, dispatch, net/ethernet) declare.
BUILTIN_IDENTIFIERS = frozenset(
    """
    void char short int long unsigned signed float double const volatile struct enum union
    _Bool bool restrict __restrict
    id SEL Class BOOL IMP instancetype Protocol NSInteger NSUInteger
    oneway in out inout bycopy byref
    _Nullable _Nonnull _Null_unspecified _Nullable_result __kindof __covariant
    __unsafe_unretained __strong __weak __autoreleasing __nullable __nonnull
    int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t ssize_t
    intptr_t uintptr_t off_t mode_t pid_t uid_t gid_t
    ether_addr_t
    """.split()  # noqa: SIM905 (a word list reads better than 60 quoted strings)
)
DARWIN_TYPE_PREFIXES = ("dispatch_",)

CXX_KEYWORDS = frozenset(
    """
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char16_t
    char32_t class compl const constexpr const_cast continue decltype default delete do double
    dynamic_cast else enum explicit export extern false float for friend goto if inline int long
    mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public
    register reinterpret_cast return short signed sizeof static static_assert static_cast struct
    switch template this thread_local throw true try typedef typeid typename union unsigned using
    virtual void volatile wchar_t while xor xor_eq id
    """.split()  # noqa: SIM905
)

# Scalar codes of the Objective-C type encoding, for struct fields (64-bit Darwin).
_ENCODING_SCALARS = {
    "c": "char",
    "C": "unsigned char",
    "s": "short",
    "S": "unsigned short",
    "i": "int",
    "I": "unsigned int",
    "l": "int",
    "L": "unsigned int",
    "q": "NSInteger",
    "Q": "NSUInteger",
    "f": "float",
    "d": "double",
    "B": "bool",
    "Z": "BOOL",
    "@": "id",
    "#": "Class",
    ":": "SEL",
    "*": "char *",
}
# Underlying type of an enum from its enum_type code.
_ENUM_UNDERLYING = {
    "q": "NSInteger",
    "Q": "NSUInteger",
    "i": "int",
    "I": "unsigned int",
    "l": "int",
    "L": "unsigned int",
    "s": "short",
    "S": "unsigned short",
    "c": "char",
    "C": "unsigned char",
}
# NS_OPTIONS vs NS_ENUM is not in the scan. Apple's NS_OPTIONS in C++ is a typedef of the
# integer type plus an anonymous enum, so `options:0` compiles; NS_ENUM is a real enum type.
# Options types are unsigned and by convention named like this.
_OPTIONS_SUFFIXES = ("Options", "Mask", "Flags")

_IDENT = re.compile(r"[A-Za-z_]\w*")


class FwinfoUnavailable(RuntimeError):
    """The scan could not be fetched (no network, package gone, ...)."""


# ---------------------------------------------------------------------------------------------
# Fetching


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agent-swarm" / "fwinfo"


def fetch(
    source: FwinfoSource, archs: Iterable[str] = ARCHS, python: str = sys.executable
) -> dict[str, Path]:
    """The scan files of ``source`` by architecture, from the cache or fetched with pip.

    ``pip download --no-binary`` of a pyobjc sdist fails off macOS (its build backend runs
    ``sw_vers`` to read the metadata), but ``--no-clean`` leaves the unpacked sdist in pip's
    temporary directory: the files are copied from there. On macOS the download succeeds and
    the files come out of the sdist archive instead."""
    archs = tuple(archs)
    dest = cache_root() / f"{source.package}-{source.version}"
    wanted = {arch: dest / source.file_name(arch) for arch in archs}
    if all(p.is_file() for p in wanted.values()):
        return wanted
    with tempfile.TemporaryDirectory(prefix="asvz-fwinfo-") as tmp:
        work = Path(tmp)
        downloads = work / "download"
        pip_tmp = work / "tmp"
        pip_tmp.mkdir()
        cmd = [
            python, "-m", "pip", "download", "--no-deps", "--no-binary", source.package,
            "--no-clean", "--disable-pip-version-check", "-d", str(downloads),
            f"{source.package}=={source.version}",
        ]  # fmt: skip
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "TMPDIR": str(pip_tmp), "PIP_NO_INPUT": "1"},
        )
        found = _find_scans(source, archs, work)
        missing = [a for a in archs if a not in found]
        if missing:
            tail = (proc.stdout + proc.stderr).strip()[-1500:]
            raise FwinfoUnavailable(
                f"{source.package}=={source.version}: no {source.subdir}/"
                f"{source.file_name(missing[0])} after `{' '.join(cmd)}` "
                f"(exit {proc.returncode}):\n{tail}"
            )
        dest.mkdir(parents=True, exist_ok=True)
        for arch, path in found.items():
            tmp_copy = wanted[arch].with_name(wanted[arch].name + f".tmp.{os.getpid()}")
            shutil.copyfile(path, tmp_copy)
            os.replace(tmp_copy, wanted[arch])
    return wanted


def _find_scans(source: FwinfoSource, archs: tuple[str, ...], root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for arch in archs:
        suffix = f"{source.subdir}/{source.file_name(arch)}"
        for path in root.rglob(source.file_name(arch)):
            if path.as_posix().endswith(suffix):
                found[arch] = path
                break
    if len(found) == len(archs):
        return found
    # pip succeeded (macOS): take the files out of the downloaded sdist.
    for archive in root.rglob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                for arch in archs:
                    suffix = f"{source.subdir}/{source.file_name(arch)}"
                    if arch not in found and member.isfile() and member.name.endswith(suffix):
                        out = root / "extracted" / arch / source.file_name(arch)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        data = tar.extractfile(member)
                        assert data is not None
                        out.write_bytes(data.read())
                        found[arch] = out
    return found


def load(path: Path) -> dict[str, Any]:
    """A scan file: ``//`` comment lines, then one JSON object."""
    text = path.read_text(encoding="utf-8")
    start = text.index("{")
    data: dict[str, Any] = json.loads(text[start:])
    return data


# ---------------------------------------------------------------------------------------------
# Versions and the scan as an index (for the object-file checks)


def version(text: str | None) -> tuple[int, ...]:
    """ "14.0" -> (14, 0); no version (available since the framework's start) -> (0,)."""
    if not text:
        return (0,)
    return tuple(int(p) for p in text.split(".") if p.lstrip("-").isdigit())


@dataclass
class ScanIndex:
    """What a set of scans declares: selectors (with the earliest macOS version any declaration
    of them has), classes and externs."""

    selectors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    classes: set[str] = field(default_factory=set)
    externs: set[str] = field(default_factory=set)

    def add(self, scan: dict[str, Any]) -> None:
        defs = scan["definitions"]
        for name, cls in defs["classes"].items():
            self.classes.add(name)
            for m in cls.get("methods", []):
                self._selector(m["selector"], m.get("introduced"))
            for p in cls.get("properties", []):
                self._property(p, cls.get("methods", []))
        for proto in defs.get("formal_protocols", {}).values():
            for m in proto.get("methods", []):
                self._selector(m["selector"], m.get("introduced"))
            for p in proto.get("properties", []):
                self._property(p, proto.get("methods", []))
        self.externs.update(defs.get("externs", {}))

    def _selector(self, sel: str, introduced: str | None) -> None:
        v = version(introduced)
        if sel not in self.selectors or v < self.selectors[sel]:
            self.selectors[sel] = v

    def _property(self, prop: dict[str, Any], methods: list[dict[str, Any]]) -> None:
        getter, setter = _accessor_names(prop)
        known = {m["selector"]: m.get("introduced") for m in methods}
        self._selector(getter, known.get(getter))
        if "readonly" not in _flat_attributes(prop):
            self._selector(setter, known.get(setter, known.get(getter)))


def index(scans: Iterable[dict[str, Any]]) -> ScanIndex:
    idx = ScanIndex()
    for scan in scans:
        idx.add(scan)
    return idx


# ---------------------------------------------------------------------------------------------
# Header generation


def _flat_attributes(prop: dict[str, Any]) -> list[str]:
    return [a for a in prop.get("attributes", []) if isinstance(a, str)]


def _accessor_names(prop: dict[str, Any]) -> tuple[str, str]:
    name = prop["name"]
    getter, setter = name, f"set{name[:1].upper()}{name[1:]}:"
    for attr in prop.get("attributes", []):
        if isinstance(attr, list) and len(attr) == 2:
            if attr[0] == "getter":
                getter = attr[1]
            elif attr[0] == "setter":
                setter = attr[1]
    return getter, setter


def _availability(introduced: str | None, deprecated: str | None = None) -> str:
    parts = []
    if introduced and version(introduced) > (0,):
        parts.append(f"introduced={introduced}")
    # "100000.-1" is API_TO_BE_DEPRECATED: not deprecated in any real release.
    if deprecated and version(deprecated) < (100000,):
        parts.append(f"deprecated={deprecated}")
    if not parts:
        return ""
    return f" __attribute__((availability(macos,{','.join(parts)})))"


@dataclass
class Report:
    """What a generation skipped (declarations whose types the scan does not resolve)."""

    skipped_methods: int = 0
    skipped_properties: int = 0
    skipped_types: int = 0
    skipped_classes: int = 0
    classes: int = 0
    methods: int = 0


class _Framework:
    def __init__(self, source: FwinfoSource, scan: dict[str, Any]) -> None:
        self.source = source
        self.scan = scan
        self.defs: dict[str, Any] = scan["definitions"]
        self.needed_types: list[str] = []  # in dependency order

    @property
    def classes(self) -> dict[str, Any]:
        return self.defs["classes"]  # type: ignore[no-any-return]


class Generator:
    """Writes ``Foundation/Foundation.h`` and ``Virtualization/Virtualization.h`` for one
    architecture's scans."""

    def __init__(
        self,
        foundation: dict[str, Any],
        virtualization: dict[str, Any],
        foundation_classes: Iterable[str] = FOUNDATION_CLASSES,
    ) -> None:
        self.fw = {"Foundation": _Framework(FOUNDATION, foundation)}
        self.fw["Virtualization"] = _Framework(VIRTUALIZATION, virtualization)
        self.report = Report()
        self.all_classes: dict[str, str] = {}  # class -> framework
        self.all_protocols: dict[str, str] = {}
        for name, fw in self.fw.items():
            for cls in fw.classes:
                self.all_classes.setdefault(cls, name)
            for proto in fw.defs.get("formal_protocols", {}):
                self.all_protocols.setdefault(proto, name)
        self.type_owner: dict[str, str] = {}  # typedef/enum/struct name -> framework
        for name, fw in self.fw.items():
            for kind in ("typedefs", "enum_type", "structs"):
                for t in fw.defs.get(kind, {}):
                    self.type_owner.setdefault(t, name)
        self.emitted_types: set[str] = set()
        self.failed_types: set[str] = set()
        self.type_decls: dict[str, list[str]] = {"Foundation": [], "Virtualization": []}

        full = set()
        for cls in foundation_classes:
            while cls and cls in self.fw["Foundation"].classes and cls != "NSObject":
                full.add(cls)
                cls = self.fw["Foundation"].classes[cls].get("super", "")
        self.full_classes = {
            "Foundation": sorted(full),
            "Virtualization": sorted(self.fw["Virtualization"].classes),
        }
        # A class whose superclass is in no scan (VZVirtualMachineView : NSView, AppKit) stays
        # a forward declaration.
        declared = set(self.full_classes["Foundation"]) | {"NSObject"}
        for cls in self._superclass_order("Virtualization"):
            sup = self.fw["Virtualization"].classes[cls].get("super") or "NSObject"
            if sup in declared:
                declared.add(cls)
            else:
                self.full_classes["Virtualization"].remove(cls)
                self.report.skipped_classes += 1

    # -- types --

    def _known(self, ident: str, params: tuple[str, ...]) -> bool:
        if ident in BUILTIN_IDENTIFIERS or ident in params:
            return True
        if ident.startswith(DARWIN_TYPE_PREFIXES):
            return True
        if ident == "NSObject" or ident in self.all_classes or ident in self.all_protocols:
            return True
        if ident in self.type_owner:
            return self._need_type(ident)
        return False

    def resolves(self, type_name: str, params: tuple[str, ...] = ()) -> bool:
        return all(self._known(i, params) for i in _IDENT.findall(type_name))

    def _need_type(self, name: str) -> bool:
        """Declares typedef/enum/struct `name` (after what it uses); False if it can't."""
        if name in self.emitted_types:
            return True
        if name in self.failed_types:
            return False
        self.failed_types.add(name)  # breaks cycles; cleared on success
        owner = self.type_owner[name]
        decl = self._type_declaration(name, self.fw[owner])
        if decl is None:
            self.report.skipped_types += 1
            return False
        self.failed_types.discard(name)
        self.emitted_types.add(name)
        self.type_decls[owner].append(decl)
        return True

    def _type_declaration(self, name: str, fw: _Framework) -> str | None:
        defs = fw.defs
        target: str | None = defs.get("typedefs", {}).get(name)
        enum_type = defs.get("enum_type", {}).get(name)
        if enum_type is not None and (target is None or target.startswith("enum ")):
            return self._enum_declaration(name, enum_type, fw)
        if target is None:
            return self._struct_declaration(name, name, defs.get("structs", {}).get(name))
        if target.startswith("struct "):
            tag = target.split()[1]
            struct = defs.get("structs", {}).get(name) or defs.get("structs", {}).get(tag)
            if struct is None and tag.startswith("_"):
                return f"typedef struct {tag} {name};"  # opaque, e.g. NSZone
            return self._struct_declaration(name, tag, struct)
        if target.startswith(("enum ", "union ")):
            return None
        if not self.resolves(target):
            return None
        for marker in ("(^)", "(*)"):
            if marker in target:
                return "typedef " + target.replace(marker, f"({marker[1]}{name})", 1) + ";"
        return f"typedef {target} {name};"

    def _enum_declaration(self, name: str, enum_type: dict[str, Any], fw: _Framework) -> str | None:
        underlying = _ENUM_UNDERLYING.get(enum_type.get("type", ""))
        if underlying is None:
            return None
        values = [
            (k, v["value"])
            for k, v in fw.defs.get("enum", {}).items()
            if isinstance(v, dict) and v.get("enum") == name and isinstance(v.get("value"), int)
        ]
        values.sort(key=lambda kv: (kv[1], kv[0]))
        body = "".join(f"  {k} = {_int_literal(v)},\n" for k, v in values)
        if underlying.startswith("NSUInteger") and name.endswith(_OPTIONS_SUFFIXES):
            return f"typedef {underlying} {name};\nenum : {underlying} {{\n{body}}};"
        return f"enum {name} : {underlying} {{\n{body}}};\ntypedef enum {name} {name};"

    def _struct_declaration(self, name: str, tag: str, struct: dict[str, Any] | None) -> str | None:
        if struct is None:
            return None
        m = re.fullmatch(r"\{([^=]*)=(.*)\}", struct.get("typestr", ""))
        fields = struct.get("fieldnames", [])
        if m and not fields and not m.group(2):
            return f"typedef struct {tag} {name};"  # opaque (NSZone)
        if not m or len(m.group(2)) != len(fields):
            return None  # nested, array or bit-field members: not needed, not decoded
        types = [_ENCODING_SCALARS.get(code) for code in m.group(2)]
        if any(t is None for t in types):
            return None
        members = "".join(f"  {t} {f};\n" for t, f in zip(types, fields, strict=True))
        return f"typedef struct {tag} {{\n{members}}} {name};"

    # -- declarations --

    def _method(self, m: dict[str, Any], params: tuple[str, ...]) -> str | None:
        types = [m["retval"].get("type_name", "id")] + [a.get("type_name", "") for a in m["args"]]
        if not all(t and self.resolves(t, params) for t in types):
            return None
        sel = m["selector"]
        parts = sel.split(":")
        if m["args"]:
            if len(parts) - 1 != len(m["args"]):
                return None
            pieces = []
            for i, (part, arg) in enumerate(zip(parts, m["args"], strict=False)):
                arg_name = arg.get("name") or f"a{i}"
                if arg_name in CXX_KEYWORDS:
                    arg_name += "_"
                pieces.append(f"{part}:({arg['type_name']}){arg_name}")
            signature = " ".join(pieces)
        else:
            if ":" in sel:
                return None
            signature = sel
        kind = "+" if m.get("class_method") else "-"
        attr = _availability(m.get("introduced"), m.get("deprecated"))
        return f"{kind} ({types[0]}){signature}{attr};"

    def _property(
        self, p: dict[str, Any], methods: list[dict[str, Any]], params: tuple[str, ...]
    ) -> str | None:
        if not self.resolves(p["type_name"], params):
            return None
        attrs = []
        for a in p.get("attributes", []):
            if isinstance(a, str):
                attrs.append(a)
            elif isinstance(a, list) and len(a) == 2 and a[0] in ("getter", "setter"):
                attrs.append(f"{a[0]}={a[1]}")
        getter, _ = _accessor_names(p)
        is_class = "class" in attrs
        accessor = next(
            (
                m
                for m in methods
                if m["selector"] == getter and bool(m.get("class_method")) == is_class
            ),
            None,
        )
        attr = (
            _availability(accessor.get("introduced"), accessor.get("deprecated"))
            if accessor
            else ""
        )
        type_name = p["type_name"]
        sep = "" if type_name.endswith("*") else " "
        return f"@property ({', '.join(attrs)}) {type_name}{sep}{p['name']}{attr};"

    def _members(
        self,
        methods: list[dict[str, Any]],
        properties: list[dict[str, Any]],
        params: tuple[str, ...],
    ) -> list[str]:
        lines = []
        accessors: set[tuple[str, bool]] = set()
        for p in properties:
            decl = self._property(p, methods, params)
            if decl is None:
                self.report.skipped_properties += 1
                continue
            getter, setter = _accessor_names(p)
            is_class = "class" in _flat_attributes(p)
            accessors.update({(getter, is_class), (setter, is_class)})
            lines.append(decl)
        for m in methods:
            if (m["selector"], bool(m.get("class_method"))) in accessors:
                continue  # declared by its property
            decl = self._method(m, params)
            if decl is None:
                self.report.skipped_methods += 1
                continue
            self.report.methods += 1
            lines.append(decl)
        return lines

    def _class(self, name: str, cls: dict[str, Any]) -> str:
        params, covariant = GENERIC_PARAMS.get(name, ((), False))
        sup = cls.get("super") or "NSObject"
        sup_params, _ = GENERIC_PARAMS.get(sup, ((), False))
        generic = ""
        if params:
            generic = (
                "<" + ", ".join(("__covariant " if covariant else "") + p for p in params) + ">"
            )
        super_spec = sup + (
            f"<{', '.join(sup_params)}>" if sup_params and sup_params == params else ""
        )
        protocols = [
            p for p in cls.get("protocols", []) if p in self.all_protocols and p != "NSObject"
        ]
        adopt = f" <{', '.join(protocols)}>" if protocols else ""
        methods = cls.get("methods", [])
        introduced = [m.get("introduced") for m in methods if m.get("introduced")]
        # The scan gives classes no version; none of a class's own methods can predate the
        # class, so the earliest one is a safe (never too early) stand-in.
        attr = _availability(min(introduced, key=version)) if introduced else ""
        body = self._members(methods, cls.get("properties", []), params)
        self.report.classes += 1
        head = f"{attr.strip()}\n" if attr else ""
        return (
            head
            + f"@interface {name}{generic} : {super_spec}{adopt}\n"
            + "\n".join(body)
            + "\n@end\n"
        )

    def _protocol(self, name: str, proto: dict[str, Any]) -> str:
        implements = [
            p for p in proto.get("implements", []) if p in self.all_protocols or p == "NSObject"
        ]
        head = f"@protocol {name}" + (f" <{', '.join(implements)}>" if implements else "")
        required = [m for m in proto.get("methods", []) if m.get("required")]
        optional = [m for m in proto.get("methods", []) if not m.get("required")]
        lines = [head]
        lines += self._members(required, proto.get("properties", []), ())
        if optional:
            lines.append("@optional")
            lines += self._members(optional, [], ())
        lines.append("@end\n")
        return "\n".join(lines)

    def _protocols_needed(self, framework: str, classes: Iterable[str]) -> list[str]:
        defs = self.fw[framework].defs.get("formal_protocols", {})
        if framework == "Virtualization":
            wanted = list(defs)
        else:
            wanted = []
            for cls in classes:
                wanted += self.fw[framework].classes[cls].get("protocols", [])
        out: list[str] = []

        def visit(p: str) -> None:
            if p in out or p not in defs or p == "NSObject":
                return
            for q in defs[p].get("implements", []):
                visit(q)
            out.append(p)

        for p in wanted:
            visit(p)
        return out

    def _superclass_order(self, framework: str) -> list[str]:
        classes = self.fw[framework].classes
        names = self.full_classes[framework]
        out: list[str] = []

        def visit(c: str) -> None:
            if c in out or c not in names:
                return
            visit(classes[c].get("super", ""))
            out.append(c)

        for c in names:
            visit(c)
        return out

    def _forward_classes(self, framework: str) -> str:
        lines = []
        for cls in sorted(self.fw[framework].classes):
            if cls == "NSObject":
                continue
            params, _ = GENERIC_PARAMS.get(cls, ((), False))
            lines.append(f"@class {cls}" + (f"<{', '.join(params)}>" if params else "") + ";")
        return "\n".join(lines)

    def _bodies(self, framework: str) -> tuple[list[str], list[str], list[str]]:
        fw = self.fw[framework]
        order = self._superclass_order(framework)
        protos = [
            self._protocol(p, fw.defs["formal_protocols"][p])
            for p in self._protocols_needed(framework, order)
        ]
        classes = [self._class(c, fw.classes[c]) for c in order]
        externs = []
        if framework == "Virtualization":
            for name, ext in sorted(fw.defs.get("externs", {}).items()):
                if self.resolves(ext["type_name"]):
                    attr = _availability(ext.get("introduced"), ext.get("deprecated"))
                    externs.append(f"extern {ext['type_name']} {name}{attr};")
                else:
                    self.report.skipped_types += 1
        return protos, classes, externs

    def write(self, include_dir: Path) -> Report:
        # Every Virtualization type (enums such as VZErrorCode are used by value only, so no
        # declaration would pull them in).
        for name, owner in self.type_owner.items():
            if owner == "Virtualization":
                self._need_type(name)
        # Virtualization first: its declarations decide which Foundation types are needed.
        v_protos, v_classes, v_externs = self._bodies("Virtualization")
        f_protos, f_classes, _ = self._bodies("Foundation")
        for framework in ("Foundation", "Virtualization"):
            fw = self.fw[framework]
            src = fw.source
            out = [
                f"// GENERATED by tests/support/fwinfo_header.py from {src.package} {src.version}",
                f"// {src.subdir}/{src.file_name(fw.scan.get('arch', '?'))} (SDK release "
                f"{fw.scan.get('release', '?')}): declarations only, for compile checks on",
                "// Linux. Derived from Apple's headers: test use only, never commit.",
                "#pragma once",
            ]
            if framework == "Foundation":
                out += [
                    "#include <objc/NSObject.h>",
                    "#include <stddef.h>",
                    "#include <stdint.h>",
                    "",
                ]
                out.append(self._forward_classes("Foundation"))
                out.append(
                    "\n".join(
                        f"@protocol {p};"
                        for p in sorted(fw.defs.get("formal_protocols", {}))
                        if p != "NSObject"
                    )
                )
                out += self.type_decls["Foundation"]
                out += f_protos + f_classes
            else:
                out += [
                    "#import <Foundation/Foundation.h>",
                    "#include <dispatch/dispatch.h>",
                    "#include <net/ethernet.h>",
                    "",
                ]
                out.append(self._forward_classes("Virtualization"))
                out.append(
                    "\n".join(
                        f"@protocol {p};" for p in sorted(fw.defs.get("formal_protocols", {}))
                    )
                )
                out += self.type_decls["Virtualization"]
                out += v_protos + v_classes + v_externs
            path = include_dir / framework / f"{framework}.h"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(out) + "\n", encoding="utf-8")
        return self.report


def _int_literal(v: int) -> str:
    if v > 2**63 - 1:
        return f"{v}ULL"
    if v < -(2**31):
        return f"({v}LL)"
    return str(v)


def generate(
    include_dir: Path, foundation: dict[str, Any], virtualization: dict[str, Any]
) -> Report:
    """Writes Foundation/Foundation.h and Virtualization/Virtualization.h into include_dir."""
    return Generator(foundation, virtualization).write(include_dir)


def scans_for(arch: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Foundation scan, Virtualization scan) of one architecture, fetched if needed."""
    return load(fetch(FOUNDATION)[arch]), load(fetch(VIRTUALIZATION)[arch])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="include directory to write into")
    ap.add_argument("--arch", choices=ARCHS, default="arm64")
    args = ap.parse_args(argv)
    foundation, virtualization = scans_for(args.arch)
    report = generate(args.out, foundation, virtualization)
    print(json.dumps(report.__dict__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
