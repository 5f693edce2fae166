//! Element types a checkpoint can hold, named as torch names them (without `torch.`).

use std::fmt;
use std::str::FromStr;

macro_rules! dtypes {
    ($($variant:ident => $name:literal, $size:literal;)*) => {
        /// A tensor element type. The on-disk name is torch's name for it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Dtype { $($variant,)* }

        impl Dtype {
            /// Every dtype the format knows, in a stable order.
            pub const ALL: &'static [Dtype] = &[$(Dtype::$variant,)*];

            /// The on-disk (and torch) name.
            pub fn name(self) -> &'static str {
                match self { $(Dtype::$variant => $name,)* }
            }

            /// Bytes per element. Sub-byte types are stored packed, two per byte, and count as
            /// one byte per *storage element* exactly as torch counts them (`float4_e2m1fn_x2`).
            pub fn itemsize(self) -> u64 {
                match self { $(Dtype::$variant => $size,)* }
            }
        }

        impl FromStr for Dtype {
            type Err = UnknownDtype;
            fn from_str(s: &str) -> Result<Self, UnknownDtype> {
                match s {
                    $($name => Ok(Dtype::$variant),)*
                    _ => Err(UnknownDtype(s.to_owned())),
                }
            }
        }
    };
}

dtypes! {
    F64 => "float64", 8;
    F32 => "float32", 4;
    F16 => "float16", 2;
    BF16 => "bfloat16", 2;
    F8E4M3FN => "float8_e4m3fn", 1;
    F8E4M3FNUZ => "float8_e4m3fnuz", 1;
    F8E5M2 => "float8_e5m2", 1;
    F8E5M2FNUZ => "float8_e5m2fnuz", 1;
    F8E8M0FNU => "float8_e8m0fnu", 1;
    F4E2M1FNX2 => "float4_e2m1fn_x2", 1;
    I8 => "int8", 1;
    I16 => "int16", 2;
    I32 => "int32", 4;
    I64 => "int64", 8;
    U8 => "uint8", 1;
    U16 => "uint16", 2;
    U32 => "uint32", 4;
    U64 => "uint64", 8;
    Bool => "bool", 1;
    C32 => "complex32", 4;
    C64 => "complex64", 8;
    C128 => "complex128", 16;
}

/// A dtype name the format does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDtype(pub String);

impl fmt::Display for UnknownDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown dtype {:?}", self.0)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &d in Dtype::ALL {
            assert_eq!(d.name().parse::<Dtype>(), Ok(d));
            assert!(d.itemsize() >= 1 && d.itemsize().is_power_of_two());
        }
        assert!("float128".parse::<Dtype>().is_err());
    }
}
