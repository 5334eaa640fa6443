//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): just enough
//! to find struct member offsets (through anonymous structs and unions) and
//! the prototypes of raw tracepoints (`btf_trace_*` typedefs).
//!
//! aya parses BTF too, but keeps type lookup crate-private; this reader is
//! small, checked against its input's bounds, and unit-tested on a BTF blob
//! built in the tests.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail, ensure};

const MAGIC: u16 = 0xeb9f;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Byte offset of the kind-specific data that follows the common header.
    extra: usize,
}

/// Parsed BTF: the type table and string section of one blob.
pub struct Btf {
    data: Vec<u8>,
    types_start: usize,
    strings_start: usize,
    strings_len: usize,
    /// Index `id - 1` (type id 0 is `void`).
    types: Vec<TypeEntry>,
    /// (kind, name) → first type id with that name.
    by_name: HashMap<(u32, String), u32>,
}

impl Btf {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| {
            format!(
                "BTF is missing: cannot read {} (guard needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y, or a BTF file for this kernel given with --btf)",
                path.display()
            )
        })?;
        Self::parse(data).with_context(|| format!("{} is not valid BTF", path.display()))
    }

    pub fn parse(data: Vec<u8>) -> Result<Self> {
        ensure!(data.len() >= 24, "shorter than a BTF header");
        let magic = u16::from_le_bytes([data[0], data[1]]);
        ensure!(
            magic == MAGIC,
            "bad magic {magic:#x} (only little-endian BTF is read)"
        );
        let u32_at = |off: usize| {
            u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
        };
        let hdr_len = u32_at(4) as usize;
        let type_off = u32_at(8) as usize;
        let type_len = u32_at(12) as usize;
        let str_off = u32_at(16) as usize;
        let str_len = u32_at(20) as usize;
        let types_start = hdr_len + type_off;
        let strings_start = hdr_len + str_off;
        ensure!(
            types_start + type_len <= data.len() && strings_start + str_len <= data.len(),
            "sections run past the end of the data"
        );
        let mut btf = Btf {
            data,
            types_start,
            strings_start,
            strings_len: str_len,
            types: Vec::new(),
            by_name: HashMap::new(),
        };
        btf.index_types(type_len)?;
        Ok(btf)
    }

    fn u32_at(&self, off: usize) -> Result<u32> {
        let bytes = self
            .data
            .get(off..off + 4)
            .context("read past the end of BTF")?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn index_types(&mut self, type_len: usize) -> Result<()> {
        let end = self.types_start + type_len;
        let mut off = self.types_start;
        while off < end {
            ensure!(off + 12 <= end, "truncated type at byte {off}");
            let name_off = self.u32_at(off)?;
            let info = self.u32_at(off + 4)?;
            let size_or_type = self.u32_at(off + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = off + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => bail!("unknown BTF kind {other} at byte {off}"),
            };
            let entry = TypeEntry {
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
            };
            self.types.push(entry);
            let id = self.types.len() as u32;
            if name_off != 0 {
                let name = self.string(name_off)?.to_owned();
                self.by_name.entry((kind, name)).or_insert(id);
            }
            off = extra + extra_len;
        }
        Ok(())
    }

    fn string(&self, off: u32) -> Result<&str> {
        let start = self.strings_start + off as usize;
        let section_end = self.strings_start + self.strings_len;
        ensure!(start < section_end, "string offset {off} out of range");
        let bytes = &self.data[start..section_end];
        let len = bytes
            .iter()
            .position(|&b| b == 0)
            .context("unterminated string")?;
        std::str::from_utf8(&bytes[..len]).context("string is not UTF-8")
    }

    fn entry(&self, id: u32) -> Result<&TypeEntry> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .with_context(|| format!("type id {id} out of range"))
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn skip_modifiers(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.entry(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        bail!("type chain too long at id {id}")
    }

    /// Type id of the function `name` (a kfunc, for instance); `None` when
    /// this kernel has none.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(&(KIND_FUNC, name.to_owned())).copied()
    }

    /// Value of `variant` in `enum name`; `None` when this kernel has no
    /// such enum or variant (an enum of a config option left out, say).
    pub fn enum_value(&self, name: &str, variant: &str) -> Result<Option<i64>> {
        let Some(&id) = self.by_name.get(&(KIND_ENUM, name.to_owned())) else {
            return Ok(None);
        };
        let t = *self.entry(id)?;
        for i in 0..t.vlen as usize {
            let at = t.extra + 8 * i;
            if self.string(self.u32_at(at)?)? == variant {
                return Ok(Some(i64::from(self.u32_at(at + 4)? as i32)));
            }
        }
        Ok(None)
    }

    /// Size in bytes of `struct name`; `None` when this kernel has none.
    pub fn struct_size(&self, name: &str) -> Result<Option<u32>> {
        let Some(&id) = self.by_name.get(&(KIND_STRUCT, name.to_owned())) else {
            return Ok(None);
        };
        Ok(Some(self.entry(id)?.size_or_type))
    }

    /// Byte offset of `member` in `struct name`, searching through anonymous
    /// struct and union members (as C's member access does).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let id = *self
            .by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .with_context(|| format!("struct {name} not found in BTF"))?;
        let bits = self
            .find_member(id, member, 0)?
            .with_context(|| format!("struct {name} has no member {member}"))?;
        ensure!(bits % 8 == 0, "{name}.{member} is a bitfield");
        Ok(bits / 8)
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>> {
        ensure!(depth < 8, "anonymous members nested too deep");
        let t = *self.entry(id)?;
        ensure!(
            matches!(t.kind, KIND_STRUCT | KIND_UNION),
            "type {id} is not a struct or union"
        );
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let name_off = self.u32_at(at)?;
            let member_type = self.u32_at(at + 4)?;
            let raw_offset = self.u32_at(at + 8)?;
            let bit_offset = if t.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            if name_off == 0 {
                let inner = self.skip_modifiers(member_type)?;
                if matches!(self.entry(inner)?.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, depth + 1)?
                {
                    return Ok(Some(bit_offset + found));
                }
            } else if self.string(name_off)? == member {
                return Ok(Some(bit_offset));
            }
        }
        Ok(None)
    }

    /// Number of arguments the raw tracepoint `name` passes to BPF programs
    /// (its TP_PROTO), from the `btf_trace_<name>` typedef; `None` when this
    /// kernel has no such tracepoint.
    pub fn raw_tracepoint_args(&self, name: &str) -> Result<Option<u32>> {
        let Some(&typedef) = self
            .by_name
            .get(&(KIND_TYPEDEF, format!("btf_trace_{name}")))
        else {
            return Ok(None);
        };
        let ptr = self.entry(typedef)?.size_or_type;
        let ptr_entry = self.entry(ptr)?;
        ensure!(
            ptr_entry.kind == KIND_PTR,
            "btf_trace_{name} is not a function pointer"
        );
        let proto = self.entry(ptr_entry.size_or_type)?;
        ensure!(
            proto.kind == KIND_FUNC_PROTO,
            "btf_trace_{name} is not a function pointer"
        );
        // The first parameter is the tracepoint's private `void *__data`.
        Ok(Some(proto.vlen.saturating_sub(1)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds little-endian BTF blobs for tests.
    #[derive(Default)]
    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, size_or_type: u32) -> u32 {
            let name_off = self.name(name);
            let info = (kind << 24) | vlen | if flag { 1 << 31 } else { 0 };
            for v in [name_off, info, size_or_type] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.push(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.push("", KIND_PTR, 0, false, to)
        }

        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.push(name, KIND_TYPEDEF, 0, false, to)
        }

        /// `members`: (name, type, bit offset).
        pub(crate) fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let kind = if union { KIND_UNION } else { KIND_STRUCT };
            let id = self.push(name, kind, members.len() as u32, false, size);
            for &(member, ty, bits) in members {
                let name_off = self.name(member);
                for v in [name_off, ty, bits] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }

        pub(crate) fn func_proto(&mut self, params: &[u32]) -> u32 {
            let id = self.push("", KIND_FUNC_PROTO, params.len() as u32, false, 0);
            for &ty in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&ty.to_le_bytes());
            }
            id
        }

        pub(crate) fn func(&mut self, name: &str, proto: u32) -> u32 {
            self.push(name, KIND_FUNC, 0, false, proto)
        }

        /// `variants`: (name, value).
        pub(crate) fn enumeration(&mut self, name: &str, variants: &[(&str, i32)]) -> u32 {
            let id = self.push(name, KIND_ENUM, variants.len() as u32, false, 4);
            for &(variant, value) in variants {
                let name_off = self.name(variant);
                self.types.extend_from_slice(&name_off.to_le_bytes());
                self.types.extend_from_slice(&value.to_le_bytes());
            }
            id
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let anon_inner = b.composite(false, "", 8, &[("exit_code", int, 0), ("flags", int, 32)]);
        let anon_union = b.composite(true, "", 8, &[("", anon_inner, 0)]);
        let task = b.composite(
            false,
            "task_struct",
            32,
            &[("pid", int, 0), ("", anon_union, 64), ("tgid", int, 192)],
        );
        let task_ptr = b.ptr(task);
        let void_ptr = b.ptr(0);
        let proto = b.func_proto(&[void_ptr, task_ptr, int]);
        let proto_ptr = b.ptr(proto);
        b.typedef("btf_trace_sched_process_exit", proto_ptr);
        b.func("bpf_send_signal_task", proto);
        b.enumeration(
            "cgroup_subsys_id",
            &[("cpuset_cgrp_id", 0), ("pids_cgrp_id", 11)],
        );
        Btf::parse(b.build()).expect("parse sample BTF")
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = sample();
        assert_eq!(btf.member_offset("task_struct", "pid").ok(), Some(0));
        assert_eq!(btf.member_offset("task_struct", "tgid").ok(), Some(24));
        // Two levels of anonymous members: union at byte 8, struct inside it.
        assert_eq!(btf.member_offset("task_struct", "exit_code").ok(), Some(8));
        assert_eq!(btf.member_offset("task_struct", "flags").ok(), Some(12));
    }

    #[test]
    fn missing_struct_and_member_are_errors_that_name_them() {
        let btf = sample();
        let err = btf
            .member_offset("task_struct", "nope")
            .expect_err("no such member");
        assert!(
            err.to_string().contains("task_struct has no member nope"),
            "{err}"
        );
        let err = btf
            .member_offset("mm_struct", "pid")
            .expect_err("no such struct");
        assert!(
            err.to_string().contains("struct mm_struct not found"),
            "{err}"
        );
    }

    #[test]
    fn counts_raw_tracepoint_arguments() {
        let btf = sample();
        assert_eq!(
            btf.raw_tracepoint_args("sched_process_exit").ok(),
            Some(Some(2))
        );
        assert_eq!(btf.raw_tracepoint_args("no_such_tp").ok(), Some(None));
    }

    #[test]
    fn finds_functions_and_enum_values() {
        let btf = sample();
        // Ten types come before it in `sample`.
        assert_eq!(btf.func_id("bpf_send_signal_task"), Some(10));
        assert_eq!(btf.func_id("bpf_nope"), None);
        assert_eq!(
            btf.enum_value("cgroup_subsys_id", "pids_cgrp_id").ok(),
            Some(Some(11))
        );
        assert_eq!(
            btf.enum_value("cgroup_subsys_id", "memory_cgrp_id").ok(),
            Some(None)
        );
        assert_eq!(btf.enum_value("nope", "x").ok(), Some(None));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        assert!(Btf::parse(vec![0; 64]).is_err());
    }
}
