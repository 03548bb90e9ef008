//! The pre-scan: one pass of an event parser over the text before serde_yaml
//! sees it. yaml-rust2's parser reports aliases without expanding them, so
//! the limits here (nodes, depth, scalar length, expanded size of aliases)
//! hold in time and memory linear in the file. serde_yaml replays aliased
//! events while deserialising, so an alias bomb must be stopped here. The
//! pass also records where every node starts, for errors found later.

use std::collections::{HashMap, HashSet};
use std::fmt;

use yaml_rust2::parser::{Event, Parser};

use super::{MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_NODES, MAX_SCALAR_BYTES};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `apps[1].resources.memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldPath(Vec<Seg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// `self.k[i]`, the common shape of list entries.
    pub fn at(&self, k: &str, i: usize) -> Self {
        self.key(k).index(i)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Kids {
    Leaf,
    Seq(Vec<usize>),
    Map(Vec<(String, usize)>),
}

#[derive(Debug)]
struct Node {
    pos: Pos,
    kids: Kids,
}

/// Where each node of the document starts, as a tree walked by field path.
#[derive(Debug, Default)]
pub(super) struct Positions {
    nodes: Vec<Node>,
}

impl Positions {
    /// The start of the node at `path`, or of its deepest ancestor present
    /// (a path through an alias stops at the alias).
    pub fn find(&self, path: &FieldPath) -> Option<Pos> {
        let mut at = self.nodes.first()?;
        for seg in &path.0 {
            let next = match (&at.kids, seg) {
                (Kids::Seq(v), Seg::Index(i)) => v.get(*i),
                (Kids::Map(v), Seg::Key(k)) => v.iter().find(|(key, _)| key == k).map(|(_, id)| id),
                _ => None,
            };
            match next.and_then(|&id| self.nodes.get(id)) {
                Some(n) => at = n,
                None => break,
            }
        }
        Some(at.pos)
    }
}

/// Why the pre-scan stopped.
#[derive(Debug)]
pub(super) struct ScanError {
    pub pos: Option<Pos>,
    pub field: FieldPath,
    pub limit: bool,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Weight {
    nodes: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Frame {
    node: usize,
    seg: Option<Seg>,
    anchor: usize,
    start: Weight,
    map: Option<MapFrame>,
}

/// The state of an open mapping.
#[derive(Debug, Default)]
struct MapFrame {
    /// The key awaiting its value, with where it is.
    pending: Option<(String, Pos)>,
    seen: HashSet<String>,
}

#[derive(Debug, Default)]
struct State {
    positions: Positions,
    frames: Vec<Frame>,
    /// The expanded weight of each anchored node, once it is complete.
    anchors: HashMap<usize, Weight>,
    text_nodes: usize,
    expanded: Weight,
    documents: usize,
}

/// What a node event is in its parent.
enum Role {
    Key,
    Value(usize, Option<Seg>),
}

impl State {
    fn path(&self, last: Option<&Seg>) -> FieldPath {
        FieldPath(self.frames.iter().filter_map(|f| f.seg.clone()).chain(last.cloned()).collect())
    }

    fn fail(&self, pos: Pos, last: Option<&Seg>, limit: bool, message: String) -> ScanError {
        ScanError { pos: Some(pos), field: self.path(last), limit, message }
    }

    /// Counts a node (with its expanded weight) and places it in the tree.
    fn place(&mut self, pos: Pos, scalar: Option<&str>, weight: Weight) -> Result<Role, ScanError> {
        self.text_nodes += 1;
        self.expanded.nodes = self.expanded.nodes.saturating_add(weight.nodes);
        self.expanded.bytes = self.expanded.bytes.saturating_add(weight.bytes);
        if self.text_nodes > MAX_NODES {
            return Err(self.fail(pos, None, true, format!("more than {MAX_NODES} YAML nodes")));
        }
        if self.expanded.nodes > MAX_NODES || self.expanded.bytes > MAX_EXPANDED_BYTES {
            return Err(self.fail(
                pos,
                None,
                true,
                format!(
                    "aliases expand the document past {MAX_NODES} nodes or {MAX_EXPANDED_BYTES} bytes \
                     (an alias bomb?); write the values out"
                ),
            ));
        }
        let awaiting_key = matches!(self.frames.last(), Some(Frame { map: Some(MapFrame { pending: None, .. }), .. }));
        if awaiting_key {
            let Some(key) = scalar else {
                return Err(self.fail(pos, None, false, "mapping keys must be plain strings".to_owned()));
            };
            let duplicate = self.frames.last().is_some_and(|f| f.map.as_ref().is_some_and(|m| m.seen.contains(key)));
            if duplicate {
                let last = Seg::Key(key.to_owned());
                return Err(self.fail(pos, Some(&last), false, format!("duplicate key {key:?}")));
            }
            if let Some(Frame { map: Some(m), .. }) = self.frames.last_mut() {
                m.seen.insert(key.to_owned());
                m.pending = Some((key.to_owned(), pos));
            }
            return Ok(Role::Key);
        }
        let id = self.positions.nodes.len();
        self.positions.nodes.push(Node { pos, kids: Kids::Leaf });
        let seg = match self.frames.last_mut() {
            None => None,
            Some(parent) => match (&mut self.positions.nodes[parent.node].kids, &mut parent.map) {
                (Kids::Map(kids), Some(m)) => {
                    let (key, key_pos) = m.pending.take().unwrap_or_default();
                    kids.push((key.clone(), id));
                    // A collection under a key is reported at its key: a
                    // block list starts on the line after `apps:`.
                    if scalar.is_none() {
                        self.positions.nodes[id].pos = key_pos;
                    }
                    Some(Seg::Key(key))
                }
                (Kids::Seq(kids), _) => {
                    kids.push(id);
                    Some(Seg::Index(kids.len() - 1))
                }
                _ => None,
            },
        };
        Ok(Role::Value(id, seg))
    }

    fn scalar(&mut self, value: &str, anchor: usize, pos: Pos) -> Result<(), ScanError> {
        let weight = Weight { nodes: 1, bytes: value.len() };
        let role = self.place(pos, Some(value), weight)?;
        if value.len() > MAX_SCALAR_BYTES {
            let last = match &role {
                Role::Value(_, seg) => seg.as_ref(),
                Role::Key => None,
            };
            return Err(self.fail(
                pos,
                last,
                true,
                format!("a value of {} bytes; the limit is {MAX_SCALAR_BYTES}", value.len()),
            ));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, weight);
        }
        Ok(())
    }

    fn alias(&mut self, anchor: usize, pos: Pos) -> Result<(), ScanError> {
        let Some(&weight) = self.anchors.get(&anchor) else {
            return Err(self.fail(pos, None, false, "an alias inside the node it refers to".to_owned()));
        };
        // An alias as a key is refused by `place`, which sees no scalar text.
        self.place(pos, None, weight)?;
        Ok(())
    }

    fn open(&mut self, mapping: bool, anchor: usize, pos: Pos) -> Result<(), ScanError> {
        let start = self.expanded;
        let role = self.place(pos, None, Weight { nodes: 1, bytes: 0 })?;
        let Role::Value(id, seg) = role else {
            return Err(self.fail(pos, None, false, "mapping keys must be plain strings".to_owned()));
        };
        if self.frames.len() >= MAX_DEPTH {
            return Err(self.fail(pos, seg.as_ref(), true, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.positions.nodes[id].kids = if mapping { Kids::Map(Vec::new()) } else { Kids::Seq(Vec::new()) };
        let map = mapping.then(MapFrame::default);
        self.frames.push(Frame { node: id, seg, anchor, start, map });
        Ok(())
    }

    fn close(&mut self) {
        if let Some(frame) = self.frames.pop() {
            if frame.anchor != 0 {
                let weight = Weight {
                    nodes: self.expanded.nodes - frame.start.nodes,
                    bytes: self.expanded.bytes - frame.start.bytes,
                };
                self.anchors.insert(frame.anchor, weight);
            }
        }
    }
}

/// Scans `text`, enforcing the limits; returns where every node starts.
pub(super) fn scan(text: &str) -> Result<Positions, ScanError> {
    let mut parser = Parser::new_from_str(text);
    let mut st = State::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            // The scanner reads flow collections ahead of the events, so its
            // own nesting limit (255) can trip before ours does.
            let limit = e.info() == "recursion limit exceeded";
            ScanError {
                pos: Some(Pos { line: e.marker().line(), column: e.marker().col() + 1 }),
                field: FieldPath::default(),
                limit,
                message: if limit { format!("nested deeper than {MAX_DEPTH} levels") } else { e.info().to_owned() },
            }
        })?;
        let pos = Pos { line: mark.line(), column: mark.col() + 1 };
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart => {
                st.documents += 1;
                if st.documents > 1 {
                    return Err(st.fail(pos, None, false, "a second YAML document; a pod file holds one".to_owned()));
                }
            }
            Event::Scalar(value, _, anchor, _) => st.scalar(&value, anchor, pos)?,
            Event::Alias(anchor) => st.alias(anchor, pos)?,
            Event::SequenceStart(anchor, _) => st.open(false, anchor, pos)?,
            Event::MappingStart(anchor, _) => st.open(true, anchor, pos)?,
            Event::SequenceEnd | Event::MappingEnd => st.close(),
        }
    }
    Ok(st.positions)
}
