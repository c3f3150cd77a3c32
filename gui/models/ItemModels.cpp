#include "gui/models/ItemModels.h"

#include <QColor>
#include <cmath>

namespace spkv::gui {
namespace {
double ratio(int64_t a, int64_t b) { return b > 0 ? double(a) / double(b) : std::nan(""); }
QString fixed(double x, int digits) { return std::isfinite(x) ? QString::number(x, 'f', digits) : QStringLiteral("–"); }
}  // namespace

// --- DensityModel -----------------------------------------------------------------------------------
void DensityModel::setCounts(int64_t layers, int64_t heads, std::vector<int64_t> kept, std::vector<int64_t> eligible,
                             std::vector<double> lo, std::vector<double> hi, QString scope) {
  const bool reshape = layers != L_ || heads != H_;
  if (reshape) beginResetModel();
  L_ = layers, H_ = heads, kept_ = std::move(kept), eligible_ = std::move(eligible), lo_ = std::move(lo), hi_ = std::move(hi);
  scope_ = std::move(scope);
  if (global_.size() != size_t(L_ * H_)) global_.clear();
  if (reference_.size() != size_t(L_ * H_)) reference_.clear();
  if (reshape) endResetModel();
  else if (L_ * H_ > 0) emit dataChanged(index(0, 0), index(int(L_ - 1), int(H_ - 1)));
}

void DensityModel::setGlobal(std::vector<uint8_t> flags) {
  global_ = flags.size() == size_t(L_ * H_) ? std::move(flags) : std::vector<uint8_t>{};
  if (L_ * H_ > 0) emit dataChanged(index(0, 0), index(int(L_ - 1), int(H_ - 1)), {GlobalRole});
}

void DensityModel::setReference(std::vector<uint8_t> flags) {
  reference_ = flags.size() == size_t(L_ * H_) ? std::move(flags) : std::vector<uint8_t>{};
  if (L_ * H_ > 0) emit dataChanged(index(0, 0), index(int(L_ - 1), int(H_ - 1)), {ReferenceRole});
}

double DensityModel::density(int layer, int head) const {
  if (layer < 0 || layer >= L_ || head < 0 || head >= H_ || kept_.empty()) return std::nan("");
  const size_t i = size_t(layer * H_ + head);
  return ratio(kept_[i], eligible_[i]);
}

int DensityModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(L_); }
int DensityModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(H_); }

QVariant DensityModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid)) return {};
  const size_t i = size_t(index.row() * H_ + index.column());
  const double d = density(index.row(), index.column());
  switch (role) {
    case Qt::DisplayRole: return fixed(d, 3);
    case DensityRole: return d;
    case GlobalRole: return !global_.empty() && global_[i] != 0;
    case ReferenceRole: return !reference_.empty() && reference_[i] != 0;
    case Qt::ToolTipRole: {
      QString s = QStringLiteral("layer %1, KV head %2%3\ndensity %4 (kept %5 of %6 eligible keys)")
                      .arg(index.row()).arg(index.column()).arg(scope_.isEmpty() ? QString() : " (" + scope_ + ")")
                      .arg(fixed(d, 4)).arg(kept_[i]).arg(eligible_[i]);
      if (!lo_.empty()) s += QStringLiteral("\nacross documents: 5%–95% [%1, %2]").arg(fixed(lo_[i], 3), fixed(hi_[i], 3));
      if (!global_.empty()) s += global_[i] ? "\nlayout: global" : "\nlayout: local";
      return s;
    }
    default: return {};
  }
}

QVariant DensityModel::headerData(int section, Qt::Orientation o, int role) const {
  if (role != Qt::DisplayRole || section < 0) return {};
  if (o == Qt::Vertical) return section < L_ ? QVariant(QStringLiteral("layer %1").arg(section)) : QVariant();
  return section < H_ ? QVariant(QStringLiteral("head %1").arg(section)) : QVariant();
}

// --- DocumentModel ----------------------------------------------------------------------------------
void DocumentModel::setCorpus(const Corpus* c, const CorpusStats* s) {
  beginResetModel();
  corpus_ = c && s ? c : nullptr, stats_ = c && s ? s : nullptr;
  ids_.clear(), tokens_.clear(), density_.clear(), compression_.clear();
  if (corpus_) {
    for (int64_t d = 0; d < c->D(); ++d) {
      ids_.push_back(QString::fromStdString(c->ids[d])), tokens_.push_back(c->tokens(d));
      density_.push_back(s->doc_density[size_t(d)]), compression_.push_back(s->report.compression[size_t(d)].compression);
    }
  }
  fillHeadDensity();
  endResetModel();
}

void DocumentModel::setHead(int64_t layer, int64_t head) {
  layer_ = layer, head_ = head;
  fillHeadDensity();
  if (!ids_.empty()) emit dataChanged(index(0, HeadDensity), index(rowCount() - 1, HeadDensity));
  emit headerDataChanged(Qt::Horizontal, HeadDensity, HeadDensity);
}

void DocumentModel::fillHeadDensity() {
  head_density_.clear();
  if (!corpus_) return;
  const int64_t LH = corpus_->LH(), i = layer_ * corpus_->info.n_kv_heads + head_;
  for (size_t d = 0; d < ids_.size(); ++d)
    head_density_.push_back(i < LH ? ratio(stats_->kept[d * size_t(LH) + size_t(i)], corpus_->eligible[d * size_t(LH) + size_t(i)])
                                   : std::nan(""));
}

int DocumentModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(ids_.size()); }
int DocumentModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : ColumnCount; }

QVariant DocumentModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid)) return {};
  const size_t d = size_t(index.row());
  if (role == Qt::DisplayRole) {
    switch (index.column()) {
      case Id: return ids_[d];
      case Tokens: return qlonglong(tokens_[d]);
      case Density: return fixed(density_[d], 3);
      case HeadDensity: return fixed(head_density_[d], 3);
      case Compression: return fixed(compression_[d], 2) + "×";
    }
  }
  if (role == Qt::UserRole) {  // sort key
    switch (index.column()) {
      case Id: return ids_[d];
      case Tokens: return qlonglong(tokens_[d]);
      case Density: return density_[d];
      case HeadDensity: return head_density_[d];
      case Compression: return compression_[d];
    }
  }
  if (role == Qt::TextAlignmentRole && index.column() != Id) return int(Qt::AlignRight | Qt::AlignVCenter);
  return {};
}

QVariant DocumentModel::headerData(int section, Qt::Orientation o, int role) const {
  if (role != Qt::DisplayRole || o != Qt::Horizontal) return {};
  if (section == HeadDensity) return QStringLiteral("L%1.H%2").arg(layer_).arg(head_);
  static const char* names[] = {"document", "tokens", "density", "", "compression"};
  return section >= 0 && section < ColumnCount ? QVariant(names[section]) : QVariant();
}

// --- TokenDetailModel -------------------------------------------------------------------------------
void TokenDetailModel::setToken(const Document* doc, int64_t t, int64_t layers, int64_t heads, const KeptRule& rule) {
  beginResetModel();
  L_ = layers, H_ = heads, t_ = doc && t >= 0 && t < doc->T ? t : -1;
  u_.clear(), kept_.clear();
  if (t_ >= 0)
    for (int64_t i = 0; i < L_ * H_; ++i) u_.push_back(half_to_float(doc->u[size_t(t_ * doc->LH + i)])), kept_.push_back(doc->kept(t_, i, rule));
  endResetModel();
}

int TokenDetailModel::rowCount(const QModelIndex& parent) const { return parent.isValid() || t_ < 0 ? 0 : int(L_); }
int TokenDetailModel::columnCount(const QModelIndex& parent) const { return parent.isValid() || t_ < 0 ? 0 : int(H_); }

QVariant TokenDetailModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid)) return {};
  const size_t i = size_t(index.row() * H_ + index.column());
  switch (role) {
    case Qt::DisplayRole: return QStringLiteral("%1 %2").arg(kept_[i] ? "●" : "○").arg(double(u_[i]), 0, 'f', 3);
    case KeptRole: return kept_[i] != 0;
    case DensityRole: return double(u_[i]);
    case Qt::ToolTipRole:
      return QStringLiteral("token %1, layer %2, KV head %3: u = %4, %5").arg(t_).arg(index.row()).arg(index.column())
          .arg(double(u_[i]), 0, 'f', 4).arg(kept_[i] ? "kept" : "dropped once out of the window");
    case Qt::BackgroundRole: return kept_[i] ? QColor(205, 232, 250) : QColor(250, 222, 205);
    default: return {};
  }
}

QVariant TokenDetailModel::headerData(int section, Qt::Orientation o, int role) const {
  if (role != Qt::DisplayRole || section < 0) return {};
  if (o == Qt::Vertical) return section < L_ ? QVariant(QStringLiteral("layer %1").arg(section)) : QVariant();
  return section < H_ ? QVariant(QStringLiteral("head %1").arg(section)) : QVariant();
}

}  // namespace spkv::gui
