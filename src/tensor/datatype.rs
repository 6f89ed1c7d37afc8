//! The tensor element types of the Open Inference Protocol and their
//! names on the wire ("FP32") and in config.pbtxt (TYPE_FP32).

use crate::pb;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's name: "BOOL", "UINT8", ..., "BYTES".
    pub fn wire_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.wire_name() == name)
    }

    /// Size of one element in bytes; None for variable-length BYTES.
    pub fn byte_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn from_config(t: pb::DataType) -> Option<Self> {
        Some(match t {
            pb::DataType::TypeInvalid => return None,
            pb::DataType::TypeBool => DataType::Bool,
            pb::DataType::TypeUint8 => DataType::Uint8,
            pb::DataType::TypeUint16 => DataType::Uint16,
            pb::DataType::TypeUint32 => DataType::Uint32,
            pb::DataType::TypeUint64 => DataType::Uint64,
            pb::DataType::TypeInt8 => DataType::Int8,
            pb::DataType::TypeInt16 => DataType::Int16,
            pb::DataType::TypeInt32 => DataType::Int32,
            pb::DataType::TypeInt64 => DataType::Int64,
            pb::DataType::TypeFp16 => DataType::Fp16,
            pb::DataType::TypeFp32 => DataType::Fp32,
            pb::DataType::TypeFp64 => DataType::Fp64,
            pb::DataType::TypeString => DataType::Bytes,
            pb::DataType::TypeBf16 => DataType::Bf16,
        })
    }

    pub fn to_config(self) -> pb::DataType {
        match self {
            DataType::Bool => pb::DataType::TypeBool,
            DataType::Uint8 => pb::DataType::TypeUint8,
            DataType::Uint16 => pb::DataType::TypeUint16,
            DataType::Uint32 => pb::DataType::TypeUint32,
            DataType::Uint64 => pb::DataType::TypeUint64,
            DataType::Int8 => pb::DataType::TypeInt8,
            DataType::Int16 => pb::DataType::TypeInt16,
            DataType::Int32 => pb::DataType::TypeInt32,
            DataType::Int64 => pb::DataType::TypeInt64,
            DataType::Fp16 => pb::DataType::TypeFp16,
            DataType::Bf16 => pb::DataType::TypeBf16,
            DataType::Fp32 => pb::DataType::TypeFp32,
            DataType::Fp64 => pb::DataType::TypeFp64,
            DataType::Bytes => pb::DataType::TypeString,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in DataType::ALL {
            assert_eq!(DataType::from_wire(t.wire_name()), Some(t));
            assert_eq!(DataType::from_config(t.to_config()), Some(t));
        }
        assert_eq!(DataType::from_wire("FLOAT"), None);
    }
}
