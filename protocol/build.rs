//! Generates the per-message codecs from `schema/*.schema` (format: schema/README.md).
//!
//! Kept deliberately plain: a line-based parser into a small tree, then one pass that prints Rust. Errors in a
//! schema file panic the build with the file and line, which is what a build script should do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Versions {
    min: i16,
    max: i16, // inclusive; i16::MAX for "and later"
}

impl Versions {
    fn cond(&self) -> String {
        match (self.min, self.max) {
            (0, i16::MAX) => "true".into(),
            (min, i16::MAX) => format!("version >= {min}"),
            (min, max) if min == max => format!("version == {min}"),
            (min, max) => format!("({min}..={max}).contains(&version)"),
        }
    }
}

#[derive(Clone, Debug)]
enum Ty {
    Prim(String),
    Array(Box<Ty>),
    Struct(String),
}

#[derive(Clone, Debug)]
struct Field {
    name: String,
    ty: Ty,
    versions: Versions,
    nullable: Option<Versions>,
    tag: Option<u32>,
    default: Option<String>,
}

#[derive(Clone, Debug)]
struct StructDef {
    name: String,
    fields: Vec<Field>,
}

struct Message {
    kind: String,
    api_key: i16,
    api_name: String,
    versions: Versions,
    flexible_min: i16,
    structs: Vec<StructDef>, // the top-level struct first
}

const PRIMS: &[&str] = &[
    "bool", "i8", "i16", "u16", "i32", "u32", "i64", "f64", "uuid", "string", "bytes", "records",
];

fn parse_versions(s: &str, _all: Versions, ctx: &str) -> Versions {
    let s = s
        .strip_prefix('v')
        .unwrap_or_else(|| panic!("{ctx}: bad versions {s}"));
    let num = |x: &str| -> i16 {
        x.parse()
            .unwrap_or_else(|_| panic!("{ctx}: bad version {x}"))
    };
    if let Some(min) = s.strip_suffix('+') {
        Versions {
            min: num(min),
            max: i16::MAX,
        }
    } else if let Some((a, b)) = s.split_once('-') {
        Versions {
            min: num(a),
            max: num(b),
        }
    } else {
        let v = num(s);
        Versions { min: v, max: v }
    }
}

fn parse_file(path: &Path) -> Message {
    let text = std::fs::read_to_string(path).expect("read schema");
    let file = path.display().to_string();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (hno, header) = lines.next().unwrap_or_else(|| panic!("{file}: empty"));
    let ctx = format!("{file}:{}", hno + 1);
    let h: Vec<&str> = header.split_whitespace().collect();
    assert!(
        h.len() == 7 && h[3] == "versions" && h[5] == "flexible",
        "{ctx}: bad header"
    );
    let any = Versions {
        min: 0,
        max: i16::MAX,
    };
    let versions = parse_versions(&format!("v{}", h[4]), any, &ctx);
    let flexible_min = if h[6] == "none" {
        i16::MAX
    } else {
        h[6].trim_end_matches('+')
            .parse()
            .unwrap_or_else(|_| panic!("{ctx}: bad flexible"))
    };
    let top = format!(
        "{}{}",
        h[2],
        if h[0] == "request" {
            "Request"
        } else {
            "Response"
        }
    );
    let mut msg = Message {
        kind: h[0].to_string(),
        api_key: h[1]
            .parse()
            .unwrap_or_else(|_| panic!("{ctx}: bad api key")),
        api_name: h[2].to_string(),
        versions,
        flexible_min,
        structs: vec![StructDef {
            name: top,
            fields: vec![],
        }],
    };
    // Stack of (indent depth, index into msg.structs) for the struct that owns lines at that depth.
    let mut stack: Vec<(usize, usize)> = vec![(1, 0)];
    for (no, line) in lines {
        let ctx = format!("{file}:{}", no + 1);
        let indent = line.len() - line.trim_start().len();
        assert!(indent % 2 == 0 && indent > 0, "{ctx}: indent by two spaces");
        let depth = indent / 2;
        while stack.last().map(|s| s.0) > Some(depth) {
            stack.pop();
        }
        let &(d, owner) = stack.last().unwrap_or_else(|| panic!("{ctx}: bad nesting"));
        assert_eq!(d, depth, "{ctx}: field is nested deeper than its struct");
        let (name, rest) = line
            .trim()
            .split_once(':')
            .unwrap_or_else(|| panic!("{ctx}: expected name: type"));
        let toks: Vec<&str> = rest.split_whitespace().collect();
        let mut i = 1;
        let ty_s = toks
            .first()
            .unwrap_or_else(|| panic!("{ctx}: missing type"));
        let ty = parse_ty(ty_s);
        let mut field = Field {
            name: name.trim().to_string(),
            ty,
            versions: msg.versions,
            nullable: None,
            tag: None,
            default: None,
        };
        while i < toks.len() {
            match toks[i] {
                t if t.starts_with('v') => field.versions = parse_versions(t, msg.versions, &ctx),
                "nullable" => {
                    i += 1;
                    field.nullable = Some(parse_versions(toks[i], msg.versions, &ctx));
                }
                "tag" => {
                    i += 1;
                    field.tag = Some(toks[i].parse().unwrap_or_else(|_| panic!("{ctx}: bad tag")));
                }
                "default" => {
                    i += 1;
                    // Quoted strings may contain spaces: take the rest of the line.
                    if toks[i].starts_with('"') {
                        field.default = Some(toks[i..].join(" "));
                        i = toks.len();
                        continue;
                    }
                    field.default = Some(toks[i].to_string());
                }
                other => panic!("{ctx}: unexpected {other}"),
            }
            i += 1;
        }
        if matches!(field.ty, Ty::Prim(ref p) if p == "records") && field.nullable.is_none() {
            field.nullable = Some(msg.versions);
        }
        let struct_name = match &field.ty {
            Ty::Struct(s) => Some(s.clone()),
            Ty::Array(inner) => match inner.as_ref() {
                Ty::Struct(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        msg.structs[owner].fields.push(field);
        if let Some(s) = struct_name {
            if !msg.structs.iter().any(|d| d.name == s) {
                msg.structs.push(StructDef {
                    name: s,
                    fields: vec![],
                });
                stack.push((depth + 1, msg.structs.len() - 1));
            }
        }
    }
    msg
}

fn parse_ty(s: &str) -> Ty {
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        Ty::Array(Box::new(parse_ty(inner)))
    } else if PRIMS.contains(&s) {
        Ty::Prim(s.to_string())
    } else {
        Ty::Struct(s.to_string())
    }
}

fn ident(name: &str) -> String {
    match name {
        "type" | "match" | "ref" | "self" | "mod" | "move" | "fn" | "loop" | "where" => {
            format!("r#{name}")
        }
        _ => name.to_string(),
    }
}

fn base_rust(ty: &Ty) -> String {
    match ty {
        Ty::Prim(p) => match p.as_str() {
            "uuid" => "Uuid".into(),
            "string" => "String".into(),
            "bytes" | "records" => "Bytes".into(),
            other => other.into(),
        },
        Ty::Array(inner) => format!("Vec<{}>", base_rust(inner)),
        Ty::Struct(s) => s.clone(),
    }
}

fn rust_ty(f: &Field) -> String {
    let b = base_rust(&f.ty);
    if f.nullable.is_some() {
        format!("Option<{b}>")
    } else {
        b
    }
}

fn default_expr(f: &Field) -> String {
    let nullable = f.nullable.is_some();
    match f.default.as_deref() {
        Some("null") => "None".into(),
        Some(v) if v.starts_with('"') => {
            if nullable {
                format!("Some(String::from({v}))")
            } else {
                format!("String::from({v})")
            }
        }
        Some(v) => {
            if nullable {
                format!("Some({v})")
            } else {
                v.to_string()
            }
        }
        None if nullable => "None".into(),
        None => match &f.ty {
            Ty::Prim(p) if p == "uuid" => "[0u8; 16]".into(),
            Ty::Prim(p) if p == "bool" => "false".into(),
            Ty::Prim(p) if p == "f64" => "0.0".into(),
            Ty::Prim(p) if p == "string" => "String::new()".into(),
            Ty::Prim(p) if p == "bytes" || p == "records" => "Bytes::new()".into(),
            Ty::Prim(_) => "0".into(),
            Ty::Array(_) => "Vec::new()".into(),
            Ty::Struct(s) => format!("{s}::default()"),
        },
    }
}

/// Decodes one non-null value of `ty`; `c` is the compactness expression.
fn decode_one(ty: &Ty, name: &str) -> String {
    match ty {
        Ty::Prim(p) => match p.as_str() {
            "string" => format!("r.string(flexible, \"{name}\")?"),
            "bytes" | "records" => format!("r.bytes(flexible, \"{name}\")?"),
            other => format!("r.{other}()?"),
        },
        Ty::Struct(s) => format!("{s}::decode(r, version)?"),
        Ty::Array(inner) => {
            let elem = decode_one(inner, name);
            format!(
                "{{ let n = r.array_len(flexible)?.ok_or(Error::UnexpectedNull(\"{name}\"))?; \
                 let mut v = Vec::with_capacity(n.min(256)); for _ in 0..n {{ v.push({elem}); }} v }}"
            )
        }
    }
}

fn decode_nullable(ty: &Ty, name: &str) -> String {
    match ty {
        Ty::Prim(p) if p == "string" => "r.nullable_string(flexible)?".into(),
        Ty::Prim(p) if p == "bytes" || p == "records" => "r.nullable_bytes(flexible)?".into(),
        Ty::Array(inner) => {
            let elem = decode_one(inner, name);
            format!(
                "match r.array_len(flexible)? {{ None => None, Some(n) => {{ \
                 let mut v = Vec::with_capacity(n.min(256)); for _ in 0..n {{ v.push({elem}); }} Some(v) }} }}"
            )
        }
        _ => panic!("field {name}: only strings, bytes and arrays can be nullable"),
    }
}

fn decode_field(f: &Field) -> String {
    let name = &f.name;
    match f.nullable {
        None => decode_one(&f.ty, name),
        Some(nv) => format!(
            "if {} {{ {} }} else {{ Some({}) }}",
            nv.cond(),
            decode_nullable(&f.ty, name),
            decode_one(&f.ty, name)
        ),
    }
}

/// Encodes the non-null value `v` (an expression of type &T).
fn encode_one(ty: &Ty, v: &str) -> String {
    match ty {
        Ty::Prim(p) => match p.as_str() {
            "string" => format!("w.put_nullable_string(Some({v}.as_str()), flexible);"),
            "bytes" | "records" => format!("w.put_nullable_bytes(Some({v}), flexible);"),
            "uuid" => format!("w.put_uuid({v});"),
            other => format!("w.put_{other}(*{v});"),
        },
        Ty::Struct(_) => format!("({v}).encode(w, version)?;"),
        Ty::Array(inner) => format!(
            "w.put_length(Some(({v}).len()), flexible, true); for e in ({v}).iter() {{ {} }}",
            encode_one(inner, "e")
        ),
    }
}

fn encode_field(f: &Field) -> String {
    let acc = format!("self.{}", ident(&f.name));
    match f.nullable {
        None => encode_one(&f.ty, &format!("&{acc}")),
        Some(nv) => {
            let null = match &f.ty {
                Ty::Array(_) => "w.put_length(None, flexible, true);",
                Ty::Prim(p) if p == "string" => "w.put_length(None, flexible, false);",
                _ => "w.put_length(None, flexible, true);",
            };
            format!(
                "match &{acc} {{ Some(v) => {{ {} }} None if {} => {{ {null} }} None => return Err(Error::UnexpectedNull(\"{}\")), }}",
                encode_one(&f.ty, "v"),
                nv.cond(),
                f.name
            )
        }
    }
}

fn gen_struct(out: &mut String, s: &StructDef, msg: &Message) {
    let _ = writeln!(
        out,
        "    #[derive(Debug, Clone, PartialEq)]\n    pub struct {} {{",
        s.name
    );
    for f in &s.fields {
        let mut doc = format!("v{}+", f.versions.min);
        if f.versions.max != i16::MAX {
            doc = format!("v{}-{}", f.versions.min, f.versions.max);
        }
        if let Some(t) = f.tag {
            doc.push_str(&format!(", tag {t}"));
        }
        let _ = writeln!(
            out,
            "        /// {doc}\n        pub {}: {},",
            ident(&f.name),
            rust_ty(f)
        );
    }
    let _ = writeln!(
        out,
        "        /// Tagged fields this version of the crate does not know, kept for round trips."
    );
    let _ = writeln!(
        out,
        "        pub unknown_tagged_fields: Vec<RawTaggedField>,\n    }}\n"
    );

    let _ = writeln!(
        out,
        "    impl Default for {} {{\n        fn default() -> Self {{\n            {} {{",
        s.name, s.name
    );
    for f in &s.fields {
        let _ = writeln!(
            out,
            "                {}: {},",
            ident(&f.name),
            default_expr(f)
        );
    }
    let _ = writeln!(
        out,
        "                unknown_tagged_fields: Vec::new(),\n            }}\n        }}\n    }}\n"
    );

    // decode
    let _ = writeln!(out, "    impl {} {{", s.name);
    let _ = writeln!(
        out,
        "        #[allow(unused_variables, unused_mut, clippy::all)]\n        pub fn decode(r: &mut Reader, version: i16) -> Result<Self> {{\n            let flexible = version >= {};\n            let mut this = Self::default();",
        msg.flexible_min
    );
    for f in s.fields.iter().filter(|f| f.tag.is_none()) {
        let _ = writeln!(
            out,
            "            if {} {{ this.{} = {}; }}",
            f.versions.cond(),
            ident(&f.name),
            decode_field(f)
        );
    }
    let _ = writeln!(out, "            if flexible {{\n                let mut unknown = Vec::new();\n                r.tagged_fields(&mut unknown, |tag, r| {{\n                    match tag {{");
    for f in s.fields.iter().filter(|f| f.tag.is_some()) {
        let _ = writeln!(
            out,
            "                        {} if {} => {{ this.{} = {}; Ok(true) }}",
            f.tag.unwrap_or_default(),
            f.versions.cond(),
            ident(&f.name),
            decode_field(f)
        );
    }
    let _ = writeln!(out, "                        _ => Ok(false),\n                    }}\n                }})?;\n                this.unknown_tagged_fields = unknown;\n            }}\n            Ok(this)\n        }}\n");

    // encode
    let _ = writeln!(
        out,
        "        #[allow(unused_variables, clippy::all)]\n        pub fn encode(&self, w: &mut Writer, version: i16) -> Result<()> {{\n            let flexible = version >= {};",
        msg.flexible_min
    );
    for f in s.fields.iter().filter(|f| f.tag.is_none()) {
        let _ = writeln!(
            out,
            "            if {} {{ {} }}",
            f.versions.cond(),
            encode_field(f)
        );
    }
    let _ = writeln!(out, "            if flexible {{\n                let mut known: Vec<(u32, bytes::BytesMut)> = Vec::new();");
    let mut tagged: Vec<&Field> = s.fields.iter().filter(|f| f.tag.is_some()).collect();
    tagged.sort_by_key(|f| f.tag);
    for f in tagged {
        let _ = writeln!(
            out,
            "                if {} && self.{} != {} {{ known.push(({4}, Writer::try_sub(|w| {{ {3} Ok(()) }})?)); }}",
            f.versions.cond(),
            ident(&f.name),
            default_expr(f),
            encode_field(f),
            f.tag.unwrap_or_default()
        );
    }
    let _ = writeln!(out, "                w.put_tagged_fields(&mut known, &self.unknown_tagged_fields);\n            }}\n            Ok(())\n        }}\n    }}\n");
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn main() {
    println!("cargo:rerun-if-changed=schema");
    let mut paths: Vec<_> = std::fs::read_dir("schema")
        .expect("schema dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "schema"))
        .collect();
    paths.sort();
    let mut out = String::from("// @generated by protocol/build.rs from protocol/schema/*.schema. Do not edit.\n\nuse crate::codec::{Reader, Writer};\nuse crate::error::{Error, Result};\nuse crate::ApiInfo;\n\n");
    let mut requests: BTreeMap<i16, (String, Versions, i16)> = BTreeMap::new();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
        let msg = parse_file(p);
        let module = snake(&msg.structs[0].name);
        let _ = writeln!(out, "pub mod {module} {{\n    #![allow(clippy::all, unused_imports)]\n    use bytes::Bytes;\n    use crate::codec::{{Reader, Writer, RawTaggedField, Uuid}};\n    use crate::error::{{Error, Result}};\n");
        let _ = writeln!(out, "    pub const API_KEY: i16 = {};\n    pub const MIN_VERSION: i16 = {};\n    pub const MAX_VERSION: i16 = {};\n    /// The first flexible version (i16::MAX when none is).\n    pub const FLEXIBLE_MIN: i16 = {};\n", msg.api_key, msg.versions.min, msg.versions.max, msg.flexible_min);
        for s in &msg.structs {
            gen_struct(&mut out, s, &msg);
        }
        out.push_str("}\n\n");
        if msg.kind == "request" {
            requests.insert(
                msg.api_key,
                (msg.api_name.clone(), msg.versions, msg.flexible_min),
            );
        }
    }

    // The API table and the request dispatch.
    out.push_str("/// Every API whose request this crate decodes: key, name, versions, first flexible version.\npub const APIS: &[ApiInfo] = &[\n");
    for (key, (name, v, flex)) in &requests {
        let _ = writeln!(out, "    ApiInfo {{ key: {key}, name: \"{name}\", min_version: {}, max_version: {}, flexible_min: {flex} }},", v.min, v.max);
    }
    out.push_str("];\n\n/// A decoded request body.\n#[derive(Debug, Clone, PartialEq)]\n#[allow(clippy::large_enum_variant)]\npub enum RequestBody {\n");
    for (name, _, _) in requests.values() {
        let _ = writeln!(
            out,
            "    {name}({}::{name}Request),",
            snake(&format!("{name}Request"))
        );
    }
    out.push_str("}\n\nimpl RequestBody {\n    /// Decodes the body of API `api_key` at `version`; the caller has checked the version is in range.\n    pub fn decode(api_key: i16, version: i16, r: &mut Reader) -> Result<Self> {\n        Ok(match api_key {\n");
    for (key, (name, _, _)) in &requests {
        let _ = writeln!(
            out,
            "            {key} => RequestBody::{name}({}::{name}Request::decode(r, version)?),",
            snake(&format!("{name}Request"))
        );
    }
    out.push_str("            other => return Err(Error::UnknownApiKey(other)),\n        })\n    }\n\n    pub fn encode(&self, w: &mut Writer, version: i16) -> Result<()> {\n        match self {\n");
    for (name, _, _) in requests.values() {
        let _ = writeln!(
            out,
            "            RequestBody::{name}(m) => m.encode(w, version),"
        );
    }
    out.push_str("        }\n    }\n\n    /// The default body of an API's request, for tests and tools.\n    pub fn default_of(api_key: i16) -> Option<Self> {\n        Some(match api_key {\n");
    for (key, (name, _, _)) in &requests {
        let _ = writeln!(
            out,
            "            {key} => RequestBody::{name}(Default::default()),"
        );
    }
    out.push_str("            _ => return None,\n        })\n    }\n\n    pub fn api_key(&self) -> i16 {\n        match self {\n");
    for (key, (name, _, _)) in &requests {
        let _ = writeln!(out, "            RequestBody::{name}(_) => {key},");
    }
    out.push_str("        }\n    }\n}\n");

    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("messages.rs");
    std::fs::write(dest, out).expect("write messages.rs");
}
