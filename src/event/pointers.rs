//! The mapping's JSON pointers, and decoding that goes into exactly the members they
//! pass through: one pass over the record, every other value left unparsed. The
//! lookups run per field of every event and are `#[inline]` (see `fields.rs`).

use serde::de::DeserializeSeed;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The mapping's JSON pointers, split into reference tokens once.
#[derive(Debug, Clone)]
pub(super) struct Pointers {
    pub(super) flow_id: Pointer,
    pub(super) tenant: Pointer,
    pub(super) sequence: Pointer,
    pub(super) event_type: Pointer,
    pub(super) status: Option<Pointer>,
    pub(super) time: Pointer,
    pub(super) time_fallbacks: Vec<Pointer>,
    pub(super) labels: Pointer,
    pub(super) traceparent: Pointer,
    pub(super) tracestate: Pointer,
    pub(super) dedupe: Option<(Pointer, Pointer)>,
}

impl Pointers {
    /// Every pointer, for [`Paths`].
    pub(super) fn all(&self) -> impl Iterator<Item = &Pointer> {
        let dedupe = self.dedupe.iter().flat_map(|(a, b)| [a, b]);
        [
            &self.flow_id,
            &self.tenant,
            &self.sequence,
            &self.event_type,
            &self.time,
            &self.labels,
            &self.traceparent,
            &self.tracestate,
        ]
        .into_iter()
        .chain(self.status.as_ref())
        .chain(&self.time_fallbacks)
        .chain(dedupe)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Pointer {
    pub(super) text: String,
    pub(super) tokens: Vec<String>,
}

impl Pointer {
    pub(super) fn new(text: &str) -> Pointer {
        let tokens = if text.is_empty() {
            Vec::new()
        } else {
            text.split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect()
        };
        Pointer {
            text: text.to_string(),
            tokens,
        }
    }
}

/// An object key that borrows from the input unless it contains escapes.
pub(super) struct Key<'a>(pub(super) std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Follows the rest of a pointer through a value left unparsed.
#[inline]
pub(super) fn follow_raw<'a>(mut current: &'a RawValue, tokens: &[String]) -> Option<&'a RawValue> {
    for token in tokens {
        let text = current.get();
        current = if text.starts_with('{') {
            Members::parse_into(text, &Paths::default())
                .ok()?
                .get(token)?
        } else if text.starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            *items.get(token.parse::<usize>().ok()?)?
        } else {
            return None;
        };
    }
    Some(current)
}

/// The object members the mapping's pointers go into, as a tree. Decoding an event
/// parses exactly these as nested objects and leaves every other value unparsed, in
/// one pass: `data` is most of a typical event, and looking up `/data/labels` in a
/// `data` captured whole read it a second time.
#[derive(Debug, Clone, Default)]
pub(super) struct Paths {
    pub(super) into: Vec<(String, Paths)>,
}

impl Paths {
    /// A member is gone into when a pointer continues below it and none ends at it
    /// (one that ends there needs the member's text, so it stays unparsed).
    pub(super) fn of<'p>(pointers: impl IntoIterator<Item = &'p [String]>) -> Paths {
        #[derive(Default)]
        struct Node {
            ends: bool,
            children: Vec<(String, Node)>,
        }
        fn convert(node: Node) -> Paths {
            Paths {
                into: node
                    .children
                    .into_iter()
                    .filter(|(_, n)| !n.ends && !n.children.is_empty())
                    .map(|(k, n)| (k, convert(n)))
                    .collect(),
            }
        }
        let mut root = Node::default();
        for tokens in pointers {
            let mut node = &mut root;
            for token in tokens {
                let at = match node.children.iter().position(|(k, _)| k == token) {
                    Some(i) => i,
                    None => {
                        node.children.push((token.clone(), Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].1;
            }
            node.ends = true;
        }
        convert(root)
    }

    pub(super) fn child(&self, key: &str) -> Option<&Paths> {
        self.into.iter().find(|(k, _)| k == key).map(|(_, p)| p)
    }
}

/// A member of a [`Members`] object.
pub(super) enum Member<'a> {
    /// Left unparsed: no pointer goes into it.
    Raw(&'a RawValue),
    /// An object a pointer goes into.
    Object(Members<'a>),
    /// An array where a pointer expected an object: its items, for index tokens.
    Array(Vec<&'a RawValue>),
    /// A scalar where a pointer expected an object: nothing below it.
    Scalar,
}

/// One JSON object level, parsed as far as [`Paths`] says. Later duplicate keys win,
/// as with `serde_json::Value`.
pub(super) struct Members<'a>(pub(super) Vec<(Key<'a>, Member<'a>)>);

impl<'a> Members<'a> {
    /// Parses `text`, going into the members `paths` names. Going into a member
    /// parses its scalars, which refuses numbers beyond `f64` that skipping accepts:
    /// on any error the text is parsed again going into nothing, so what is accepted
    /// and the error reported do not depend on the mapping.
    pub(super) fn parse(text: &'a str, paths: &Paths) -> Result<Members<'a>, serde_json::Error> {
        Self::parse_into(text, paths).or_else(|_| Self::parse_into(text, &Paths::default()))
    }

    pub(super) fn parse_into(
        text: &'a str,
        paths: &Paths,
    ) -> Result<Members<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let members = ObjectSeed(paths).deserialize(&mut de)?;
        de.end()?;
        Ok(members)
    }

    #[inline]
    pub(super) fn member(&self, key: &str) -> Option<&Member<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.0 == key)
            .map(|(_, v)| v)
    }

    /// A top-level member that a pointer ends at.
    #[inline]
    pub(super) fn get(&self, key: &str) -> Option<&'a RawValue> {
        match self.member(key)? {
            Member::Raw(raw) => Some(*raw),
            _ => None,
        }
    }

    /// Follows a pointer; `None` when any step is missing or not a container.
    #[inline]
    pub(super) fn lookup(&self, pointer: &Pointer) -> Option<&'a RawValue> {
        self.follow(&pointer.tokens)
    }

    #[inline]
    pub(super) fn follow(&self, tokens: &[String]) -> Option<&'a RawValue> {
        let (first, rest) = tokens.split_first()?;
        match self.member(first)? {
            Member::Raw(raw) => follow_raw(raw, rest),
            Member::Object(inner) => inner.follow(rest),
            Member::Array(items) => {
                let (index, rest) = rest.split_first()?;
                follow_raw(items.get(index.parse::<usize>().ok()?)?, rest)
            }
            Member::Scalar => None,
        }
    }
}

/// Parses an object, going into the members `Paths` names.
pub(super) struct ObjectSeed<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Members<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Members<'de>, D::Error> {
        struct V<'p>(&'p Paths);
        impl<'de> serde::de::Visitor<'de> for V<'_> {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Members<'de>, A::Error> {
                members(self.0, map)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

pub(super) fn members<'de, A: serde::de::MapAccess<'de>>(
    paths: &Paths,
    mut map: A,
) -> Result<Members<'de>, A::Error> {
    let mut entries = Vec::with_capacity(16);
    while let Some(key) = map.next_key::<Key<'de>>()? {
        let member = match paths.child(&key.0) {
            Some(paths) => map.next_value_seed(MemberSeed(paths))?,
            None => Member::Raw(map.next_value::<&'de RawValue>()?),
        };
        entries.push((key, member));
    }
    Ok(Members(entries))
}

/// Parses a member a pointer goes into, whatever it turns out to be.
pub(super) struct MemberSeed<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for MemberSeed<'_> {
    type Value = Member<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Member<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MemberSeed<'_> {
    type Value = Member<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        members(self.0, map).map(Member::Object)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(Member::Array(items))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
}
